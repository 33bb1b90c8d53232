//! `garretd`: the Garret cache server and its admin commands.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use garretd::config::{Config, ConfigSource};

#[derive(Parser)]
#[command(
    name = "garretd",
    version,
    about = "Garret: an Attic-compatible Nix binary cache server"
)]
struct Cli {
    /// TOML configuration file (Attic's server.toml keys). Without it, embedded defaults
    /// are used: SQLite and local chunk storage inside --data-dir.
    #[arg(long, short = 'f', global = true, env = "GARRETD_CONFIG")]
    config: Option<PathBuf>,
    /// Directory for embedded defaults: server.db, storage/, the token secret.
    /// Default: $XDG_DATA_HOME/garret.
    #[arg(long, global = true, env = "GARRETD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "GARRETD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server (runs database migrations first).
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:8080 (overrides `listen` in the config).
        #[arg(long, short = 'l', env = "GARRETD_LISTEN")]
        listen: Option<String>,
    },
    /// Print a signed JWT with the given rights (same flags as `atticadm make-token`).
    MakeToken(MakeTokenArgs),
    /// Run database migrations and exit.
    Migrate,
    /// Load and validate the configuration, then exit.
    CheckConfig,
    /// Run one garbage-collection pass (expire objects, delete unreferenced NARs and chunks).
    Gc {
        /// Stop after marking chunks for deletion (simulates a crash; for tests).
        #[arg(long, hide = true)]
        stop_after_mark: bool,
    },
}

#[derive(Args)]
struct MakeTokenArgs {
    /// The token's subject (user or machine name).
    #[arg(long)]
    sub: String,
    /// How long the token is valid, e.g. "1 hour", "30 days", "2y".
    #[arg(long)]
    validity: String,
    /// Print the claims as JSON instead of a signed token.
    #[arg(long)]
    dump_claims: bool,
    /// Cache name pattern the token may pull from (`*` is a wildcard). Repeatable.
    #[arg(long, value_name = "PATTERN")]
    pull: Vec<String>,
    /// Cache name pattern the token may push to. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    push: Vec<String>,
    /// Cache name pattern the token may delete objects from. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    delete: Vec<String>,
    /// Cache name pattern the token may create. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    create_cache: Vec<String>,
    /// Cache name pattern the token may reconfigure. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    configure_cache: Vec<String>,
    /// Cache name pattern whose retention the token may change. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    configure_cache_retention: Vec<String>,
    /// Cache name pattern the token may destroy. Repeatable.
    #[arg(long, value_name = "PATTERN")]
    destroy_cache: Vec<String>,
    /// Server right: push revocation entries (`POST /_api/v1/revocations`), as the operator
    /// does; grants nothing on any cache.
    #[arg(long)]
    push_revocations: bool,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GARRETD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Transparent huge pages make the allocator's first touch of a fresh page zero 2 MiB at
/// a time; with the ~64-256 KiB buffers the upload path allocates and frees, that was over
/// half of an upload's CPU time (measured with perf: 3 s of system time per 256 MiB).
fn disable_transparent_huge_pages() {
    // SAFETY: prctl with PR_SET_THP_DISABLE only changes this process's memory policy.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// glibc gives every thread that allocates its own arena; the blocking pool's threads
/// (hashing, compression, file writes) then each keep freed buffers around. Two arenas
/// keep memory flat in NAR size at no measurable cost in speed.
fn limit_malloc_arenas() {
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> anyhow::Result<()> {
    disable_transparent_huge_pages();
    limit_malloc_arenas();
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let listen = match &cli.command {
        Command::Serve { listen } => listen.clone(),
        _ => None,
    };
    let source = ConfigSource {
        file: cli.config.clone(),
        data_dir: cli.data_dir.clone(),
        listen,
    };
    let cfg = Config::load(&source)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    match cli.command {
        Command::Serve { .. } => rt.block_on(garretd::server::serve(cfg, source)),
        Command::Migrate => rt.block_on(async {
            let db = garretd::db::Database::connect(cfg.database_url()).await?;
            db.migrate().await?;
            eprintln!("migrations applied");
            Ok(())
        }),
        Command::CheckConfig => {
            garretd::store::Compression::from_config(&cfg.compression)?;
            garretd::secrets::load_signing_key(&cfg, false)?;
            garretd::watch::read_revocations(cfg.jwt.revocation_list.as_deref())?;
            for c in &cfg.caches {
                garretd::declare::declared_keypair(c)?;
            }
            eprintln!("configuration OK");
            Ok(())
        }
        Command::MakeToken(args) => make_token(&cfg, args),
        Command::Gc { stop_after_mark } => rt.block_on(async {
            let stop = if stop_after_mark {
                garretd::gc::StopAfter::Mark
            } else {
                garretd::gc::StopAfter::Never
            };
            let r = garretd::server::gc_once(&cfg, stop).await?;
            println!(
                "expired {} objects, deleted {} NARs and {} chunks, freed {} bytes, removed {} stale temporary files",
                r.objects_expired, r.nars_deleted, r.chunks_deleted, r.bytes_freed, r.temp_files_swept
            );
            Ok(())
        }),
    }
}

fn make_token(cfg: &Config, a: MakeTokenArgs) -> anyhow::Result<()> {
    use garret_core::token::{mint, new_jti, parse_validity, MakeToken};
    let req = MakeToken {
        sub: a.sub,
        validity: parse_validity(&a.validity)?,
        pull: a.pull,
        push: a.push,
        delete: a.delete,
        create_cache: a.create_cache,
        configure_cache: a.configure_cache,
        configure_cache_retention: a.configure_cache_retention,
        destroy_cache: a.destroy_cache,
        issuer: cfg.jwt.token_bound_issuer.clone(),
        audiences: cfg.jwt.token_bound_audiences.clone(),
        server: garret_core::token::ServerRights {
            push_revocations: a.push_revocations,
        },
    };
    let claims = req.claims(garret_core::clock::unix_now(), new_jti())?;
    if a.dump_claims {
        println!("{}", serde_json::to_string_pretty(&claims)?);
        return Ok(());
    }
    let key = garretd::secrets::load_signing_key(cfg, true)?;
    println!("{}", mint(&claims, &key)?);
    Ok(())
}
