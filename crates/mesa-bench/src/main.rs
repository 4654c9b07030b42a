//! `mesa-bench`: load generator for Mesa-protocol gateways. See the library docs and `docs/benchmarks.md`.

use std::io::Read;
use std::process::ExitCode;

use clap::Parser;
use mesa_bench::args::{Cli, Command};
use mesa_bench::{compare, scenario};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Compare(args) = &cli.command {
        let mut text = String::new();
        for file in &args.files {
            let read = if file == "-" {
                std::io::stdin().read_to_string(&mut text).map(|_| ())
            } else {
                std::fs::read_to_string(file).map(|t| text.push_str(&t))
            };
            if let Err(error) = read {
                eprintln!("mesa-bench: cannot read {file}: {error}");
                return ExitCode::from(2);
            }
            text.push('\n');
        }
        print!(
            "{}",
            compare::table(&compare::parse_lines(&text), &args.ours, &args.against)
        );
        return ExitCode::SUCCESS;
    }
    // Every loop is bounded; this is the backstop should one not be.
    let limit = cli.command.time_limit();
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!("mesa-bench: still running after {limit:?}: giving up");
        std::process::exit(3);
    });
    // One worker per CPU this process may run on (`taskset -c 1` gives one).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mesa-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match &cli.command {
            Command::Idle(args) => scenario::idle::run(args).await,
            Command::Fanout(args) => scenario::fanout::run(args).await,
            Command::Echo(args) => scenario::echo::run(args).await,
            Command::Connect(args) => scenario::connect::run(args).await,
            Command::Storm(args) => scenario::storm::run(args).await,
            Command::Targeted(args) => scenario::targeted::run(args).await,
            Command::Resume(args) => scenario::resume::run(args).await,
            Command::Compare(_) => unreachable!("handled above"),
        }
    });
    // Connection tasks still closing must not hold the process.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(report) => {
            report.print();
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("mesa-bench: {error}");
            ExitCode::from(2)
        }
    }
}
