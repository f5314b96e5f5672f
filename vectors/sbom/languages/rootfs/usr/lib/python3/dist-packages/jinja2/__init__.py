# jinja2
