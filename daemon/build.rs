//! Generates the gRPC code for `proto/kiln/v1/kiln.proto` with protox (a pure-Rust protobuf
//! compiler): building kiln needs no system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["kiln/v1/kiln.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
