//! `kiln`: the command line for a kiln server. Argument parsing and output
//! formatting only; the calls themselves are in the `kiln-client` SDK.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_client::{load_job_file, pb, Client, Error};

mod output;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Train and serve neural networks with a kiln server"
)]
struct Cli {
    /// The kiln server's address.
    #[arg(long, global = true, env = "KILN_SERVER", default_value = kiln_client::DEFAULT_SERVER)]
    server: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Submit a job file (a SubmitJobRequest as YAML or JSON); prints the job id.
    Submit {
        /// A .yaml, .yml or .json file, in the proto3 JSON mapping (as grpcurl takes).
        job_file: PathBuf,
        /// Follow the job: a progress bar per epoch, then a summary.
        #[arg(long)]
        watch: bool,
    },
    /// List the jobs, newest first.
    Jobs {
        /// Only jobs in this state (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        state: Option<String>,
    },
    /// Follow a job until it ends (replaying its events from the first), then summarize it.
    Watch { job_id: String },
    /// Cancel a queued or running job.
    Cancel { job_id: String },
    /// Upload and list datasets.
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// List the models in the registry (every version).
    Models,
    /// Predict the rows of a CSV file; writes CSV to stdout.
    Predict {
        /// Model name, or the id of the job that trained it.
        model: String,
        /// CSV with a header row naming the model's input columns ("-" for stdin).
        #[arg(long)]
        csv: PathBuf,
        /// Version number or alias. Default: the newest loaded version.
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Subcommand)]
enum DatasetsCommand {
    /// Upload a CSV file with a header row, or one or more .npy arrays (each named after its file).
    Upload {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Dataset name. Default: the first file's name without its extension.
        #[arg(long)]
        name: Option<String>,
    },
    /// List the datasets, newest first.
    List,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("error: internal error: {info}");
    }));
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            if !is_broken_pipe(&e) {
                eprintln!("error: {e}");
            }
            ExitCode::FAILURE
        }
    }
}

/// What a command returns: an exit code, or an error printed as one line.
type Outcome = Result<ExitCode, CliError>;

#[derive(Debug)]
enum CliError {
    Kiln(Error),
    Io(std::io::Error),
    Usage(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            CliError::Kiln(e) => write!(f, "{e}"),
            CliError::Io(e) => write!(f, "{e}"),
            CliError::Usage(e) => write!(f, "{e}"),
        }
    }
}

impl From<Error> for CliError {
    fn from(e: Error) -> Self {
        CliError::Kiln(e)
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Io(e)
    }
}

fn is_broken_pipe(e: &CliError) -> bool {
    matches!(e, CliError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe)
}

async fn run(cli: Cli) -> Outcome {
    let server = cli.server;
    match cli.command {
        Command::Submit { job_file, watch } => {
            // Read the file before connecting: a bad file needs no server.
            let request = load_job_file(&job_file)?;
            let client = Client::connect(&server).await?;
            let job = client.submit(request).await?;
            if watch {
                eprintln!("submitted {} (model {})", job.id, job.model_name);
                follow(&client, job).await
            } else {
                output::print(&format!("{}\n", job.id))?;
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Jobs { state } => {
            let state = match state {
                Some(s) => parse_state(&s)?,
                None => pb::JobState::Unspecified,
            };
            let client = Client::connect(&server).await?;
            let jobs = client.jobs_in_state(state).await?;
            output::print(&output::jobs_table(&jobs))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { job_id } => {
            let client = Client::connect(&server).await?;
            let job = client.get_job(&job_id).await?;
            follow(&client, job).await
        }
        Command::Cancel { job_id } => {
            let client = Client::connect(&server).await?;
            let job = client.cancel(&job_id).await?;
            output::print(&format!(
                "{} {}\n",
                job.id,
                kiln_client::state_name(job.state())
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Datasets { command } => datasets(&server, command).await,
        Command::Models => {
            let client = Client::connect(&server).await?;
            let models = client.models().await?;
            output::print(&output::models_table(&models))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            model,
            csv,
            version,
        } => {
            let bytes = read_input(&csv)?;
            let client = Client::connect(&server).await?;
            let table = client
                .predict_csv(&model, version.as_deref().unwrap_or(""), &bytes)
                .await?;
            let mut out = std::io::stdout().lock();
            table.write_csv(&mut out)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn datasets(server: &str, command: DatasetsCommand) -> Outcome {
    let client = Client::connect(server).await?;
    match command {
        DatasetsCommand::Upload { files, name } => {
            let name = name.unwrap_or_else(|| file_stem(&files[0]));
            let npy = files.iter().filter(|f| has_extension(f, "npy")).count();
            let dataset = if npy == files.len() {
                let arrays = files.iter().map(|f| (file_stem(f), f.clone()));
                client.upload_npy(arrays, &name).await?
            } else if files.len() == 1 {
                client.upload_csv(files[0].clone(), &name).await?
            } else {
                return Err(CliError::Usage(
                    "upload one CSV file, or one or more .npy files".into(),
                ));
            };
            output::print(&output::datasets_table(&[dataset]))?;
        }
        DatasetsCommand::List => {
            let datasets = client.datasets().await?;
            output::print(&output::datasets_table(&datasets))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Follows a job to its end: live progress on stderr, the summary on stdout.
/// Exits non-zero unless the job succeeded.
async fn follow(client: &Client, job: pb::Job) -> Outcome {
    let mut progress = output::Progress::new(&job, std::io::stderr().is_terminal());
    let job = client.wait_with(&job.id, |e| progress.event(e)).await?;
    progress.finish();
    let model = if job.state() == pb::JobState::Succeeded {
        client
            .models()
            .await?
            .into_iter()
            .find(|m| m.job_id == job.id)
    } else {
        None
    };
    output::print(&output::job_summary(&job, model.as_ref()))?;
    if job.state() == pb::JobState::Succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        let mut message = format!("job {} {}", job.id, kiln_client::state_name(job.state()));
        if !job.message.is_empty() {
            message.push_str(": ");
            message.push_str(&job.message);
        }
        Err(CliError::Usage(message))
    }
}

fn parse_state(s: &str) -> Result<pb::JobState, CliError> {
    let upper = s.trim().to_ascii_uppercase();
    let name = if upper.starts_with("JOB_STATE_") {
        upper
    } else {
        format!("JOB_STATE_{upper}")
    };
    pb::JobState::from_str_name(&name).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown job state {s:?}: use queued, running, succeeded, failed or cancelled"
        ))
    })
}

fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
    if path.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin().read_to_end(&mut bytes)?;
        return Ok(bytes);
    }
    std::fs::read(path).map_err(|source| {
        CliError::Kiln(Error::Io {
            path: path.to_path_buf(),
            source,
        })
    })
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}

fn has_extension(path: &Path, ext: &str) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case(ext))
}
