//! `kiln`: the command line for a kiln server. Argument parsing and output
//! formatting only; the calls themselves are in the `kiln-client` SDK.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kiln_client::{load_job_file, load_sweep_file, pb, Client, Error};

mod output;
mod score;

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
    /// The server's bearer token, for a server with `auth_token` set.
    #[arg(long, global = true, env = "KILN_TOKEN", hide_env_values = true)]
    token: Option<String>,
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
        /// Only the trials of this sweep.
        #[arg(long)]
        sweep: Option<String>,
        /// Only jobs with this label (KEY=VALUE; repeat for several).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Sort by a best-epoch metric: val_loss (ascending), -val_accuracy (descending), ...
        #[arg(long, allow_hyphen_values = true)]
        order_by: Option<String>,
    },
    /// Hyper-parameter sweeps: submit, follow, inspect, cancel.
    Sweep {
        #[command(subcommand)]
        command: SweepCommand,
    },
    /// Compare jobs side by side: the spec fields that differ, best metrics, curves.
    Compare {
        #[arg(required = true, num_args = 2..)]
        job_ids: Vec<String>,
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
    /// Predict the rows of a CSV file, or score an uploaded dataset on the
    /// server; writes the predictions as CSV to stdout (or --output).
    #[command(group(clap::ArgGroup::new("input").required(true).args(["csv", "dataset"])))]
    Predict {
        /// Model name, or the id of the job that trained it.
        model: String,
        /// CSV with a header row naming the model's input columns ("-" for stdin).
        #[arg(long)]
        csv: Option<PathBuf>,
        /// An uploaded dataset (id, or the newest with this name), scored on
        /// the server; its predictions are stored as a dataset, then downloaded.
        #[arg(long)]
        dataset: Option<String>,
        /// Version number or alias. Default: the newest loaded version.
        #[arg(long)]
        version: Option<String>,
        /// Write the CSV to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Score an uploaded dataset that holds the model's target column(s);
    /// prints the metrics (and for classification the confusion matrix).
    Evaluate {
        /// Model name, or the id of the job that trained it.
        model: String,
        /// The dataset: an id, or the newest dataset with this name.
        #[arg(long)]
        dataset: String,
        /// Version number or alias. Default: the newest loaded version.
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Subcommand)]
enum SweepCommand {
    /// Submit a sweep file (a SubmitSweepRequest as YAML or JSON); prints the sweep id.
    Submit {
        sweep_file: PathBuf,
        /// Follow the sweep (trials starting, pruned, finishing), then print the leaderboard.
        #[arg(long)]
        watch: bool,
    },
    /// Show a sweep's leaderboard.
    Get { sweep_id: String },
    /// Follow a sweep until it ends, then print the leaderboard.
    Watch { sweep_id: String },
    /// Cancel a sweep's unfinished trials.
    Cancel { sweep_id: String },
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
    /// Download a dataset's stored file (e.g. scored predictions).
    Download {
        /// The dataset: an id, or the newest dataset with this name.
        dataset: String,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
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

/// Where to connect, and with which token.
struct Server {
    address: String,
    token: Option<String>,
}

impl Server {
    async fn connect(&self) -> Result<Client, kiln_client::Error> {
        Client::connect_with_token(&self.address, self.token.as_deref()).await
    }
}

async fn run(cli: Cli) -> Outcome {
    let server = Server {
        address: cli.server,
        token: cli.token,
    };
    match cli.command {
        Command::Submit { job_file, watch } => {
            // Read the file before connecting: a bad file needs no server.
            let request = load_job_file(&job_file)?;
            let client = server.connect().await?;
            let job = client.submit(request).await?;
            if watch {
                eprintln!("submitted {} (model {})", job.id, job.model_name);
                follow(&client, job).await
            } else {
                output::print(&format!("{}\n", job.id))?;
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Jobs {
            state,
            sweep,
            labels,
            order_by,
        } => {
            let state = match state {
                Some(s) => parse_state(&s)?,
                None => pb::JobState::Unspecified,
            };
            let labels = labels
                .iter()
                .map(|l| {
                    l.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .ok_or_else(|| {
                            CliError::Usage(format!("--label {l:?}: write it as KEY=VALUE"))
                        })
                })
                .collect::<Result<_, _>>()?;
            let client = server.connect().await?;
            let jobs = client
                .list_jobs(pb::ListJobsRequest {
                    state: state as i32,
                    sweep_id: sweep.unwrap_or_default(),
                    labels,
                    order_by: order_by.unwrap_or_default(),
                })
                .await?;
            output::print(&output::jobs_table(&jobs))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sweep { command } => sweep(&server, command).await,
        Command::Compare { job_ids } => {
            let client = server.connect().await?;
            let comparison = client.compare(&job_ids).await?;
            output::print(&output::comparison(&comparison))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch { job_id } => {
            let client = server.connect().await?;
            let job = client.get_job(&job_id).await?;
            follow(&client, job).await
        }
        Command::Cancel { job_id } => {
            let client = server.connect().await?;
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
            let client = server.connect().await?;
            let models = client.models().await?;
            output::print(&output::models_table(&models))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            model,
            csv: Some(csv),
            version,
            output,
            ..
        } => {
            let bytes = read_input(&csv)?;
            let client = server.connect().await?;
            let table = client
                .predict_csv(&model, version.as_deref().unwrap_or(""), &bytes)
                .await?;
            let mut csv = Vec::new();
            table.write_csv(&mut csv)?;
            score::write_output(output.as_deref(), &csv)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Predict {
            model,
            dataset,
            version,
            output,
            ..
        } => {
            let dataset = dataset.expect("clap requires --csv or --dataset");
            let client = server.connect().await?;
            score::predict_dataset(&client, &model, version.as_deref(), &dataset, output).await
        }
        Command::Evaluate {
            model,
            dataset,
            version,
        } => {
            let client = server.connect().await?;
            score::evaluate(&client, &model, version.as_deref(), &dataset).await
        }
    }
}

async fn sweep(server: &Server, command: SweepCommand) -> Outcome {
    match command {
        SweepCommand::Submit { sweep_file, watch } => {
            // Read the file before connecting: a bad file needs no server.
            let request = load_sweep_file(&sweep_file)?;
            let client = server.connect().await?;
            let sweep = client.submit_sweep(request).await?;
            if watch {
                eprintln!(
                    "submitted {} ({} trials, model {})",
                    sweep.id, sweep.total_trials, sweep.model_name
                );
                follow_sweep(&client, &sweep.id).await
            } else {
                output::print(&format!("{}\n", sweep.id))?;
                Ok(ExitCode::SUCCESS)
            }
        }
        SweepCommand::Get { sweep_id } => {
            let client = server.connect().await?;
            let sweep = client.get_sweep(&sweep_id).await?;
            output::print(&output::sweep_summary(&sweep))?;
            Ok(ExitCode::SUCCESS)
        }
        SweepCommand::Watch { sweep_id } => {
            let client = server.connect().await?;
            follow_sweep(&client, &sweep_id).await
        }
        SweepCommand::Cancel { sweep_id } => {
            let client = server.connect().await?;
            let sweep = client.cancel_sweep(&sweep_id).await?;
            output::print(&format!("{} cancelling\n", sweep.id))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows a sweep: one line per trial event on stderr, the leaderboard on
/// stdout. Exits non-zero unless the sweep succeeded.
async fn follow_sweep(client: &Client, sweep_id: &str) -> Outcome {
    let sweep = client
        .wait_sweep_with(sweep_id, |e| {
            if let Some(line) = e.kind.as_ref().and_then(output::sweep_event_text) {
                eprintln!("{line}");
            }
        })
        .await?;
    output::print(&output::sweep_summary(&sweep))?;
    if sweep.state() == pb::SweepState::Succeeded {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(CliError::Usage(format!(
            "sweep {}: {}",
            sweep.id, sweep.message
        )))
    }
}

async fn datasets(server: &Server, command: DatasetsCommand) -> Outcome {
    let client = server.connect().await?;
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
        DatasetsCommand::Download { dataset, output } => {
            score::download(&client, &dataset, output.as_deref()).await?;
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
