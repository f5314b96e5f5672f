//! `kiln policy eval|test|schema`: work on a Rego policy outside a build, as `opa eval` and
//! `opa test` do.

use std::path::{Path, PathBuf};

use kiln_policy::{Gate, Policy, TestOutcome};

use crate::commands::{Failure, usage};

/// Policy subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Evaluate one gate of a policy against an input document and print the decision.
    ///
    /// Exit 0 when the gate allows, 1 when it denies (an error while loading or evaluating the
    /// policy denies too: kiln fails closed).
    ///
    /// Examples:
    ///   kiln policy eval --gate exec --input step.json policy/
    ///   kiln policy eval --gate source --input - policy.rego < source.json
    #[command(verbatim_doc_comment)]
    Eval {
        /// The gate: admission, source, exec, export or verify (package kiln.<gate>).
        #[arg(long, value_parser = parse_gate)]
        gate: Gate,
        /// The input document (JSON; `-` for stdin). `kiln policy schema GATE` prints its shape.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Print the decision as JSON (the record a build keeps).
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// A .rego file, or a directory of .rego files (and data.json).
        #[arg(value_name = "POLICY")]
        path: PathBuf,
    },
    /// Run a policy's tests: every rule named test_* (use `with input as …` to feed them), as
    /// `opa test` does. Exit 1 if any test fails.
    ///
    /// Examples:
    ///   kiln policy test policy/examples
    ///   kiln policy test -v --run pinned policy/
    #[command(verbatim_doc_comment)]
    Test {
        /// Print every test, not only failures.
        #[arg(short, long)]
        verbose: bool,
        /// Run only tests whose name contains this.
        #[arg(long, value_name = "SUBSTRING")]
        run: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// A .rego file, or a directory of .rego files (and data.json).
        #[arg(value_name = "POLICY")]
        path: PathBuf,
    },
    /// Print the JSON Schema of a gate's input.
    Schema {
        /// The gate.
        #[arg(value_parser = parse_gate)]
        gate: Gate,
    },
}

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For programs.
    Json,
}

fn parse_gate(s: &str) -> Result<Gate, String> {
    Gate::parse(s).ok_or_else(|| {
        format!(
            "unknown gate {s:?}: use one of {}",
            Gate::ALL.map(Gate::name).join(", ")
        )
    })
}

/// Loads `--policy PATH` for a build or a verify, naming the flag in the error.
pub fn load(path: &Path) -> Result<Policy, Failure> {
    Policy::load(path).map_err(|e| Failure::from(anyhow::anyhow!("--policy: {e}")))
}

/// Runs a policy subcommand.
pub fn run(cmd: PolicyCommand) -> Result<(), Failure> {
    match cmd {
        PolicyCommand::Eval {
            gate,
            input,
            format,
            path,
        } => eval(gate, &input, format, &path),
        PolicyCommand::Test {
            verbose,
            run,
            format,
            path,
        } => test(&path, run.as_deref(), verbose, format),
        PolicyCommand::Schema { gate } => {
            print!("{}", gate.input_schema());
            Ok(())
        }
    }
}

fn eval(gate: Gate, input: &Path, format: Format, path: &Path) -> Result<(), Failure> {
    // Read at most one byte over the evaluation's input bound, so a huge file is refused
    // without being read whole.
    let limit = kiln_policy::Limits::default().max_input_bytes;
    let reader: Box<dyn std::io::Read> = if input == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(input)
                .map_err(|e| usage(format!("--input {}: {e}", input.display())))?,
        )
    };
    let text = std::io::read_to_string(std::io::Read::take(reader, limit as u64 + 1))
        .map_err(|e| usage(format!("--input {}: {e}", input.display())))?;
    if text.len() > limit {
        return Err(usage(format!(
            "--input {}: over the {limit}-byte input bound",
            input.display()
        )));
    }
    let input_json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| usage(format!("--input {}: not JSON: {e}", input.display())))?;
    let decision = match Policy::load(path) {
        Ok(p) => p.evaluate(gate, &input_json),
        // Fail closed, and say so the way a build would record it.
        Err(e) => kiln_policy::Decision::error(gate, "", e.to_string(), Default::default()),
    };
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&decision.to_json()).unwrap_or_default()
        ),
        Format::Text => {
            println!(
                "{}: {}{}",
                gate.package(),
                if decision.allow { "allow" } else { "deny" },
                if decision.error { " (error)" } else { "" }
            );
            for m in &decision.messages {
                println!("  - {m}");
            }
            if let Some(r) = &decision.rewrite {
                println!("  rewrite: {r}");
            }
            if !decision.policy_digest.is_empty() {
                println!("  policy: {}", decision.policy_digest);
            }
            println!("  evaluated in {} µs", decision.eval_us);
        }
    }
    if decision.allow {
        Ok(())
    } else {
        Err(Failure::silent(1))
    }
}

fn test(path: &Path, filter: Option<&str>, verbose: bool, format: Format) -> Result<(), Failure> {
    let policy = Policy::load(path).map_err(|e| Failure::from(anyhow::anyhow!("{e}")))?;
    let report = policy.run_tests(filter);
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        Format::Text => {
            for r in &report.results {
                let show = verbose || r.outcome != TestOutcome::Pass;
                if !show {
                    continue;
                }
                let word = match r.outcome {
                    TestOutcome::Pass => "PASS",
                    TestOutcome::Fail => "FAIL",
                    TestOutcome::Error => "ERROR",
                };
                println!(
                    "{}: {} {word} ({} µs)",
                    r.file,
                    r.name,
                    r.duration.as_micros()
                );
                if let Some(d) = &r.detail
                    && r.outcome != TestOutcome::Pass
                {
                    println!("  {d}");
                }
                for p in &r.prints {
                    println!("  print: {p}");
                }
            }
            if !report.results.is_empty() {
                println!("{}", "-".repeat(80));
            }
            let failed = report.results.len() - report.passed();
            if report.results.is_empty() {
                println!("no tests found (rules named test_*)");
            } else if failed == 0 {
                println!("PASS: {}/{}", report.passed(), report.results.len());
            } else {
                println!("PASS: {}/{}", report.passed(), report.results.len());
                println!("FAIL: {failed}/{}", report.results.len());
            }
        }
    }
    if report.ok() {
        Ok(())
    } else {
        Err(Failure::silent(1))
    }
}
