package kiln.export

user := input.image.config.user

is_root if user == ""
is_root if user in {"root", "0"}
is_root if startswith(user, "root:")
is_root if startswith(user, "0:")

deny contains msg if {
	is_root
	msg := sprintf("image runs as root (USER %q)", [user])
}
