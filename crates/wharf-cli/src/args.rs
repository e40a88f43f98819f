//! The clap definitions of the client commands, and the parsers of their odd values.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Human-readable tables and messages.
    #[default]
    Table,
    /// Tables with more columns (images, container ids, addresses).
    Wide,
    /// The JSON replies of the API, pretty-printed: one document per command.
    Json,
    /// The same document as YAML.
    Yaml,
    /// Only the names of what is listed, as `kind/name`, one per line.
    Name,
}

impl OutputFormat {
    /// JSON or YAML: a document for scripts, no text for people.
    pub fn is_document(self) -> bool {
        matches!(self, OutputFormat::Json | OutputFormat::Yaml)
    }
}

/// Options shared by every client command. Flatten it into the binary's top-level parser.
#[derive(Args, Clone, Debug, Default)]
pub struct GlobalOpts {
    /// Output format: human tables (wide: more columns), the API's replies as JSON or YAML
    /// (one document per command), or names only
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Only print ids (names) of what is listed, one per line
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

/// The commands that talk to a wharf API (or only read files).
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Deploy, diff, list and remove stacks (Compose files)
    #[command(subcommand, after_help = STACK_HELP)]
    Stack(StackCmd),
    /// List, inspect, scale, restart, roll back, rebalance services and read their logs
    #[command(subcommand, after_help = SERVICE_HELP)]
    Service(ServiceCmd),
    /// Jobs (services that run to completion, on a schedule or once): list, run now, list runs,
    /// read a run's logs
    #[command(subcommand, after_help = JOB_HELP)]
    Job(JobCmd),
    /// Nodes: list, inspect, label, drain, activate, remove; join tokens for new agents
    #[command(subcommand)]
    Node(NodeCmd),
    /// The masters: which run, which one leads, and the health of the store's members
    #[command(subcommand)]
    Master(MasterCmd),
    /// API tokens for machines (CI jobs, scripts): create with a role and a stack scope, list,
    /// revoke
    #[command(subcommand)]
    Token(TokenCmd),
    /// Named users (people): add with a role, list, remove, set a password
    #[command(subcommand)]
    User(UserCmd),
    /// Webhooks: a git host's push deploys a stack (incoming); deploy events POSTed to a URL,
    /// signed, retried (outgoing); their delivery log
    #[command(subcommand)]
    Hook(HookCmd),
    /// Log in to a wharf API as a user: writes a session (12 hours) to the CLI context
    #[command(after_help = "\
Examples:
  wharf login https://master:7700 --user ann            asks for the password
  wharf login https://master:7700 --user ann --invitation CODE
                                                        sets a password with an invitation
  echo \"$PW\" | wharf login URL --user ann --password-stdin")]
    Login {
        /// The API, e.g. http://127.0.0.1:7700
        url: String,
        /// The user name [default: $USER]
        #[arg(long)]
        user: Option<String>,
        /// A one-time invitation code from `wharf user add`: asks for the password to set
        #[arg(long, value_name = "CODE")]
        invitation: Option<String>,
        /// Read the password (with --invitation: the one to set) from standard input
        #[arg(long)]
        password_stdin: bool,
        /// Trust an HTTPS API whose CA has this SHA-256 fingerprint (`wharf server` prints it
        /// at start) without asking
        #[arg(long, value_name = "SHA256")]
        ca_fingerprint: Option<String>,
    },
    /// Unlock an autolocked master (`wharf server --autolock`) on its own host: asks for the
    /// unlock key the server printed when its store was made
    #[command(after_help = "\
Examples:
  wharf unlock                                          asks for the key
  wharf unlock --key-stdin < unlock-key.txt")]
    Unlock {
        /// Read the unlock key from standard input
        #[arg(long)]
        key_stdin: bool,
    },
    /// The audit trail: every change and every refused attempt, hash-chained
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Secrets: values kept sealed, in versions, never shown again; services mount them at
    /// /run/secrets/NAME (stack files: `secrets:`)
    #[command(
        subcommand,
        after_help = "Examples:\n  wharf secret create db_password -f ./db_password.txt\n  printf %s \"$PW\" | wharf secret create db_password -\n  wharf secret inspect db_password"
    )]
    Secret(ObjectCmd),
    /// Configs: files kept sealed, in versions, that services mount (stack files: `configs:`)
    #[command(
        subcommand,
        after_help = "Examples:\n  wharf config create site_conf -f ./nginx.conf\n  wharf config ls"
    )]
    Config(ObjectCmd),
    /// Keys at rest: `wharf key rotate` makes a new master key file (DATA_DIR/master.key on the
    /// master) and re-seals the data key under it; back the new file up with the store
    #[command(subcommand)]
    Key(KeyCmd),
    /// The master's built-in OCI registry (`docker login HOST:PORT` with a token as password,
    /// then push and pull `HOST:PORT/STACK/NAME:TAG`)
    #[command(
        subcommand,
        after_help = "Examples:\n  wharf registry gc\n  wharf registry gc --grace 0s"
    )]
    Registry(RegistryCmd),
    /// The admission policy: what stacks may ask of the hosts (privileges, host paths,
    /// capabilities…), as `wharf server --policy FILE` set it
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Image scanning: the vulnerability database images are matched against (OSV advisories
    /// an operator imports from files; nothing is fetched from the internet)
    #[command(subcommand)]
    Scan(ScanCmd),
    /// Images: `wharf image scan IMAGE` lists the known vulnerabilities of an image's OS
    /// packages
    #[command(subcommand)]
    Image(ImageCmd),
    /// The resource usage of every running instance the token sees (CPU, memory, network,
    /// block I/O), refreshed as `docker stats`; `wharf service stats` for one service
    #[command(after_help = "\
The table is drawn again every second or two (each row is the engine's one-second sample)
until Ctrl-C; --no-stream prints it once, -o json|yaml prints one document.

Examples:
  wharf top
  wharf top --no-stream
  wharf top -o json")]
    Top {
        /// Print the table once instead of refreshing it
        #[arg(long)]
        no_stream: bool,
    },
    /// Print the client version and the version of the API it talks to
    Version,
    /// Print a shell completion script
    #[command(after_help = COMPLETION_HELP)]
    Completion {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The cluster's events: deploys and their steps, instances scheduled, started, healthy,
    /// exited, moved; nodes joined, unreachable, drained. Oldest first; -f keeps following
    #[command(after_help = "\
Examples:
  wharf events --since 10m                 what happened in the last ten minutes
  wharf events -f --stack shop             follow one stack's events
  wharf events -o json --after 1234.0      one JSON object per line, after a cursor
                                           (each event's `cursor` resumes right after it)")]
    Events {
        /// Keep streaming new events as they happen
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only events from this time on: a duration ago (10m, 1h30m) or an RFC 3339 time
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<i64>,
        /// Only events of this stack
        #[arg(long, value_name = "STACK", add = crate::complete::stacks())]
        stack: Option<String>,
        /// Resume after this cursor (the `cursor` of the last event read, from `-o json`)
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
    },
    /// Deployments: list them, show one, or follow one started with --detach
    #[command(subcommand, after_help = DEPLOYMENT_HELP)]
    Deployment(DeploymentCmd),
    /// Which cluster the commands talk to: list, add, use and remove contexts
    #[command(after_help = CONTEXT_HELP)]
    Context {
        #[command(subcommand)]
        cmd: Option<ContextCmd>,
    },
}

const DEPLOYMENT_HELP: &str = "\
Examples:
  wharf deployment ls                   the latest deployments, newest first
  wharf deployment ls --stack shop
  wharf deployment status 01J9ZK…       one deployment: its state and each service's progress
  wharf stack deploy --detach && wharf deployment follow 01J9ZK…";

#[derive(Subcommand, Debug)]
pub enum DeploymentCmd {
    /// List deployments, newest first
    #[command(visible_alias = "list")]
    Ls {
        /// Only the deployments of this stack
        #[arg(long, short = 's', add = crate::complete::stacks())]
        stack: Option<String>,
    },
    /// Show a deployment: its state and each service's progress
    #[command(visible_alias = "inspect")]
    Status {
        /// The deployment id (as `stack deploy --detach` printed it)
        id: String,
    },
    /// Follow a deployment to its end, as `stack deploy` does; exits 0 when it succeeded
    Follow {
        /// The deployment id (as `stack deploy --detach` printed it)
        id: String,
        /// Give up waiting after this long (the deployment goes on): e.g. 90s, 5m, 1h
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum ContextCmd {
    /// List the contexts; the current one is marked with *
    #[command(visible_alias = "list")]
    Ls,
    /// Show the current context: its API URL and where it is configured (the default)
    Show,
    /// Make a context the current one (WHARF_CONTEXT overrides it per command)
    Use {
        /// The context's name (`default` is the one `wharf up` and `wharf login` wrote)
        #[arg(add = crate::complete::contexts())]
        name: String,
    },
    /// Add (or replace) a context: a cluster's API URL and a token read from standard input
    #[command(after_help = "\
Examples:
  echo \"$TOKEN\" | wharf context add prod --url https://10.0.0.1:7400 --ca-fingerprint SHA256
  wharf context use prod")]
    Add {
        /// The context's name
        name: String,
        /// The API URL; several masters as a comma-separated list
        #[arg(long)]
        url: String,
        /// The SHA-256 of the API's CA certificate (as `wharf login` prints it); needed for https
        #[arg(long, value_name = "SHA256")]
        ca_fingerprint: Option<String>,
        /// Read the API token from standard input (one line); without it the context has no token
        #[arg(long)]
        token_stdin: bool,
    },
    /// Remove a context (not the current one unless --force)
    #[command(visible_alias = "remove")]
    Rm {
        /// The context's name
        #[arg(add = crate::complete::contexts())]
        name: String,
        /// Remove it even though it is the current one
        #[arg(long, short = 'f')]
        force: bool,
    },
}

const STACK_HELP: &str = "\
Examples:
  wharf stack deploy                    deploy ./stack.yml (or compose.yaml, docker-compose.yml)
  wharf stack deploy -c shop.yml --name shop
  wharf stack diff -c shop.yml          what a deploy would change, without changing anything
  wharf stack ps shop                   the instances of stack shop and their health
  wharf stack rm shop --volumes";

const SERVICE_HELP: &str = "\
SERVICE is `stack/service`, or just `service` when only one stack has a service of that name.

Examples:
  wharf service ls --stack shop
  wharf service scale web=3 shop/worker=5
  wharf service logs -f --tail 100 shop/web
  wharf service exec -it shop/web -- sh
  wharf service stats web
  wharf service restart api";

const COMPLETION_HELP: &str = "\
Examples:
  wharf completion bash > ~/.local/share/bash-completion/completions/wharf
  wharf completion zsh > \"${fpath[1]}/_wharf\"
  wharf completion fish > ~/.config/fish/completions/wharf.fish";

const CONTEXT_HELP: &str = "\
A context is a cluster's API URL and a token. `wharf up` and `wharf login` write the
current one; the one named `default` is $WHARF_CONFIG_DIR/context.json (default
~/.config/wharf/context.json), others are contexts/NAME.json beside it (mode 0600).
WHARF_CONTEXT picks another context per command; WHARF_URL and WHARF_TOKEN override
the context's fields. Tokens are never printed.

Examples:
  wharf context                     the current context
  wharf context ls
  echo \"$TOKEN\" | wharf context add prod --url https://10.0.0.1:7400 --token-stdin
  wharf context use prod
  WHARF_CONTEXT=default wharf stack ls";

/// Which stack file to read.
#[derive(Args, Clone, Debug, Default)]
pub struct FileArg {
    /// The Compose file; `-` reads standard input. Repeat to merge files in order, as Compose
    /// [default: ./stack.yml, stack.yaml, compose.yaml, compose.yml, docker-compose.yaml or
    /// docker-compose.yml, with its override file (compose.override.yaml...) if present]
    #[arg(
        short = 'c',
        long = "file",
        visible_alias = "compose-file",
        value_name = "FILE"
    )]
    pub file: Vec<PathBuf>,
    /// Enable a Compose profile: its services are deployed too (repeatable; `*` enables all)
    /// [default: $COMPOSE_PROFILES]
    #[arg(long = "profile", value_name = "NAME")]
    pub profile: Vec<String>,
    /// Let the stack file read env_file, build contexts and Dockerfiles outside its own
    /// directory (refused by default, so a stack file from elsewhere cannot read /etc/shadow)
    #[arg(long)]
    pub allow_outside: bool,
}

/// How to follow the deployment a command starts.
#[derive(Args, Clone, Debug)]
pub struct DeployOpts {
    /// Do not wait: print the deployment id and return
    #[arg(long, short = 'd')]
    pub detach: bool,
    /// Give up waiting after this long (the deployment goes on): e.g. 90s, 5m, 1h
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Set from the global `--output`.
    #[arg(skip)]
    pub output: OutputFormat,
}

impl Default for DeployOpts {
    fn default() -> Self {
        DeployOpts {
            detach: false,
            timeout: Duration::from_secs(300),
            output: OutputFormat::Table,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum StackCmd {
    /// Deploy (or update) a stack from a Compose file and follow the rollout
    #[command(after_help = "\
Prints what changes (`+` created, `~` changed, `-` removed services), then follows the
deployment until every instance runs the new spec and is healthy. Exits 0 when it
succeeded or nothing changed, 1 when it failed or timed out, 2 when the file is invalid.

Variables like ${TAG} in the file come from the environment.

Examples:
  wharf stack deploy
  wharf stack deploy -c shop.yml shop          as `docker stack deploy -c shop.yml shop`
  TAG=1.2 wharf stack deploy -c shop.yml --name shop
  wharf stack deploy --detach                  then: wharf deployment follow ID
  wharf stack deploy --timeout 10m -o json     one JSON document at the end")]
    Deploy {
        #[command(flatten)]
        file: FileArg,
        /// The stack name [default: `name:` in the file, else the file's directory]
        #[arg(long, short = 'n')]
        name: Option<String>,
        /// The stack name, as `docker stack deploy -c FILE NAME` takes it
        #[arg(value_name = "STACK", conflicts_with = "name", add = crate::complete::stacks())]
        stack: Option<String>,
        #[command(flatten)]
        opts: DeployOpts,
    },
    /// Check a Compose file without deploying it
    #[command(after_help = "\
Exits 0 when the file is valid, 2 with located errors otherwise.

Examples:
  wharf stack validate
  wharf stack validate -c shop.yml shop
  wharf stack validate -o yaml        the stack as Wharf understood it")]
    Validate {
        #[command(flatten)]
        file: FileArg,
        /// The stack name [default: `name:` in the file, else the file's directory]
        #[arg(long, short = 'n')]
        name: Option<String>,
        /// The stack name, as a positional argument
        #[arg(value_name = "STACK", conflicts_with = "name")]
        stack: Option<String>,
    },
    /// Show what deploying a Compose file would change, without changing anything
    #[command(after_help = "\
Exits 0 (or, with --exit-code, 0 when nothing would change and 1 when something
would), 2 when the file is invalid.

Examples:
  wharf stack diff
  wharf stack diff -c shop.yml shop
  wharf stack diff --exit-code -q || echo \"shop would change\"")]
    Diff {
        #[command(flatten)]
        file: FileArg,
        /// The stack name [default: `name:` in the file, else the file's directory]
        #[arg(long, short = 'n')]
        name: Option<String>,
        /// The stack name, as a positional argument
        #[arg(value_name = "STACK", conflicts_with = "name")]
        stack: Option<String>,
        /// Exit 1 when the deploy would change something (as `git diff --exit-code`), for CI gates
        #[arg(long)]
        exit_code: bool,
    },
    /// List the stacks
    #[command(visible_alias = "list")]
    Ls,
    /// List a stack's deployments, newest first: what started each (a `git push` and its commit,
    /// a registry push, a webhook), who, and the image each service got (pinned by digest)
    #[command(
        after_help = "Examples:\n  wharf stack history shop\n  wharf stack history shop -o json"
    )]
    History {
        /// The stack
        #[arg(add = crate::complete::stacks())]
        name: String,
    },
    /// List the instances of a stack: where they run, their state and health
    #[command(
        after_help = "Examples:\n  wharf stack ps shop\n  wharf stack ps shop --filter state=running -q"
    )]
    Ps {
        /// The stack
        #[arg(add = crate::complete::stacks())]
        name: String,
        /// Only instances that match, as KEY=VALUE (state, health, node, service); repeat to narrow
        #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = parse_filter)]
        filter: Vec<Filter>,
    },
    /// List the services of a stack (as `wharf service ls --stack NAME`)
    #[command(
        after_help = "Examples:\n  wharf stack services shop\n  wharf stack services shop -q"
    )]
    Services {
        /// The stack
        #[arg(add = crate::complete::stacks())]
        name: String,
    },
    /// Remove a stack: its services, containers and network (and volumes with --volumes)
    #[command(
        visible_alias = "remove",
        after_help = "\
Waits until everything is removed unless --detach is given.

Examples:
  wharf stack rm shop
  wharf stack rm shop blog           several stacks, one after the other
  wharf stack rm shop --volumes      also delete the stack's named volumes (data is lost)"
    )]
    Rm {
        /// The stacks
        #[arg(required = true, value_name = "STACK", add = crate::complete::stacks())]
        names: Vec<String>,
        /// Also remove the stack's named volumes (not external ones)
        #[arg(long)]
        volumes: bool,
        /// Do not wait for the removal to finish
        #[arg(long, short = 'd')]
        detach: bool,
        /// Give up waiting after this long: e.g. 30s, 2m
        #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// List services, of every stack or of one
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  wharf service ls\n  wharf service ls --stack shop"
    )]
    Ls {
        /// Only the services of this stack
        #[arg(long, short = 's', add = crate::complete::stacks())]
        stack: Option<String>,
    },
    /// List the instances of a service
    #[command(
        after_help = "Examples:\n  wharf service ps web\n  wharf service ps shop/web --filter state=running\n  wharf service ps web -q"
    )]
    Ps {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
        /// Only instances that match, as KEY=VALUE (state, health, node, service); repeat to narrow
        #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = parse_filter)]
        filter: Vec<Filter>,
    },
    /// Change a service's image or environment (a new revision of its spec), and follow the
    /// rolling update
    #[command(after_help = "\
The change lasts until the stack is deployed again from its file.

Examples:
  wharf service update --image shop/web:1.4 web
  wharf service update --env-add LOG_LEVEL=debug --env-rm OLD_FLAG shop/api")]
    Update {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
        /// The new image
        #[arg(long)]
        image: Option<String>,
        /// Set an environment variable, as KEY=VALUE; repeat for more
        #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
        env_add: Vec<(String, String)>,
        /// Remove an environment variable; repeat for more
        #[arg(long, value_name = "KEY")]
        env_rm: Vec<String>,
        #[command(flatten)]
        opts: DeployOpts,
    },
    /// List the revisions of a service's spec, the current one marked (what rollback --to takes)
    #[command(
        after_help = "Examples:\n  wharf service history web\n  wharf service rollback web --to 3"
    )]
    History {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
    },
    /// Show a service: its spec, state and instances (`-o json` for everything)
    #[command(
        after_help = "Examples:\n  wharf service inspect shop/web\n  wharf service inspect web -o json"
    )]
    Inspect {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
    },
    /// Change the number of replicas of services, and follow the change
    #[command(after_help = "\
Examples:
  wharf service scale web=3
  wharf service scale shop/web=3 shop/worker=0
  wharf service scale web=5 --detach")]
    Scale {
        /// `SERVICE=N` (SERVICE is `stack/service` or `service`)
        #[arg(required = true, value_name = "SERVICE=N", value_parser = parse_scale)]
        targets: Vec<ScaleTarget>,
        #[command(flatten)]
        opts: DeployOpts,
    },
    /// Replace every instance of a service (rolling, per its update_config), and follow it
    #[command(
        after_help = "Examples:\n  wharf service restart web\n  wharf service restart shop/api --detach"
    )]
    Restart {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
        #[command(flatten)]
        opts: DeployOpts,
    },
    /// Roll a service back to an earlier revision of its spec (per its rollback_config), and
    /// follow it; the replica count stays as it is
    #[command(after_help = "\
Without --to, the revision before the one that is running; a second rollback goes
further back (it does not undo the first). `wharf service history` lists the revisions.

Examples:
  wharf service rollback web
  wharf service rollback shop/api --to 3
  wharf service rollback shop/api --detach")]
    Rollback {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
        /// The revision to go back to (see `wharf service history`)
        #[arg(long, value_name = "REVISION")]
        to: Option<u64>,
        #[command(flatten)]
        opts: DeployOpts,
    },
    /// Spread a service's instances evenly again, e.g. after nodes joined (start-first moves)
    #[command(
        after_help = "Examples:\n  wharf service rebalance web\n  wharf service rebalance shop/api --detach"
    )]
    Rebalance {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
        #[command(flatten)]
        opts: DeployOpts,
    },
    /// Run a command in an instance of a service (as `docker exec`); wharf exits with the
    /// command's exit code
    #[command(after_help = "\
The command runs in the first running instance of the service, or in slot N with
`service.N`, on whichever node it runs. Its output comes back as it is written; with -i
your standard input goes to it; with -t it gets a terminal (yours goes raw until it ends,
and window sizes follow). wharf exits with the command's code; 2 when the API refuses
(no such service or instance, a token without the exec permission), 1 when wharf fails.
Every exec is recorded in the audit trail (`wharf audit`), with the command.

Examples:
  wharf service exec web -- ls -la /tmp
  wharf service exec shop/web.2 -- sh -c 'echo $HOSTNAME'
  wharf service exec -it web -- sh                an interactive shell
  echo 'select 1;' | wharf service exec -i db -- psql")]
    Exec {
        /// `stack/service` or `service`; `.N` for slot N (`web.2`), else the first running
        /// instance
        #[arg(add = crate::complete::services())]
        service: String,
        /// Keep standard input open and send it to the command
        #[arg(long, short = 'i')]
        interactive: bool,
        /// Give the command a terminal (a TTY): for shells and full-screen programs
        #[arg(long, short = 't')]
        tty: bool,
        /// The command and its arguments, after `--`
        #[arg(required = true, last = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Show the resource usage of a service's instances (CPU, memory, network, block I/O),
    /// refreshed as `docker stats`
    #[command(after_help = "\
One row per running instance, on whichever node it runs. The table is drawn again until
Ctrl-C; --no-stream prints it once, -o json|yaml prints one document. `wharf top` shows
every service.

Examples:
  wharf service stats web
  wharf service stats shop/web --no-stream
  wharf service stats web -o json")]
    Stats {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
        /// Print the table once instead of refreshing it
        #[arg(long)]
        no_stream: bool,
    },
    /// Print the logs of a service's instances, as `instance | line`
    #[command(after_help = "\
Lines the program wrote to stderr go to stderr. Following (-f), instances that start later
(a rolling update, a reschedule) join the stream. Stop with Ctrl-C. `-o json` prints one
JSON object per line (instance, node, stream, line, time with -t).

Examples:
  wharf service logs web
  wharf service logs -f --tail 20 shop/web
  wharf service logs web.2 --since 10m -t      slot 2 only, the last ten minutes, with times
  wharf service logs web --since 2026-12-07T09:00:00Z --until 1h")]
    Logs {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        service: String,
        /// Keep streaming new lines
        #[arg(long, short = 'f')]
        follow: bool,
        /// Start with only the last N lines of each instance
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<u64>,
        /// Only lines from this time on: a duration ago (10m, 1h30m) or an RFC 3339 time
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        since: Option<i64>,
        /// Only lines before this time: a duration ago (5m) or an RFC 3339 time
        #[arg(long, value_name = "WHEN", value_parser = parse_when)]
        until: Option<i64>,
        /// Show the time the engine took each line
        #[arg(long, short = 't')]
        timestamps: bool,
    },
}

const JOB_HELP: &str = "\
A job is a service with `deploy.mode: replicated-job` or `global-job` (runs once per deploy of
a new spec) or `x-wharf: {schedule: \"*/5 * * * *\"}` (runs on its schedule).

Examples:
  wharf job ls
  wharf job run shop/backup
  wharf job ps shop/backup -o json
  wharf job logs shop/backup          the newest run
  wharf job logs shop/backup 12       run 12";

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// List jobs: schedule, last run, next run, last outcome
    #[command(visible_alias = "list")]
    Ls {
        /// Only the jobs of this stack
        stack: Option<String>,
    },
    /// Start a run of a job now (whatever its schedule)
    Run {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        job: String,
    },
    /// List the runs of a job: scheduled time, start, end, duration, exit code, nodes
    Ps {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        job: String,
    },
    /// Print the logs of a run of a job (the newest that started, unless RUN is given)
    Logs {
        /// `stack/service`, or `service` when only one stack has it
        #[arg(add = crate::complete::services())]
        job: String,
        /// The run's number (`wharf job ps`)
        run: Option<u64>,
        /// Keep streaming new lines
        #[arg(long, short = 'f')]
        follow: bool,
        /// Show the time the engine took each line
        #[arg(long, short = 't')]
        timestamps: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum MasterCmd {
    /// List the masters (the leader first) and the etcd members with their health
    #[command(
        visible_alias = "list",
        after_help = "\
Examples:
  wharf master ls                 a table: id, role, API, agents connected; etcd members
  wharf master ls -o json         for scripts (MastersStatus)"
    )]
    Ls,
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List the nodes, their state, drivers and capacity
    #[command(visible_alias = "list")]
    Ls,
    /// Join tokens: what a new agent needs to join the cluster
    #[command(subcommand)]
    Token(NodeTokenCmd),
    /// List the instances on a node
    #[command(
        after_help = "Examples:\n  wharf node ps node-1a2b\n  wharf node ps node-1a2b --filter state=running"
    )]
    Ps {
        /// Node id or name
        #[arg(add = crate::complete::nodes())]
        node: String,
        /// Only instances that match, as KEY=VALUE (state, health, node, service); repeat to narrow
        #[arg(long, short = 'f', value_name = "KEY=VALUE", value_parser = parse_filter)]
        filter: Vec<Filter>,
    },
    /// Show one node: state, facts, labels, instances
    Inspect {
        /// Node id or name
        #[arg(add = crate::complete::nodes())]
        node: String,
    },
    /// Set or remove node labels (used by placement constraints and spread preferences)
    #[command(
        after_help = "Examples:\n  wharf node label node-1a2b zone=a disk=ssd\n  wharf node label node-1a2b --rm disk"
    )]
    Label {
        /// Node id or name
        #[arg(add = crate::complete::nodes())]
        node: String,
        /// Labels to set, as key=value
        #[arg(value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Label keys to remove
        #[arg(long = "rm", value_name = "KEY")]
        remove: Vec<String>,
    },
    /// Move every instance off a node with zero downtime (replacements run and are healthy
    /// elsewhere before the old ones stop), e.g. to patch the host
    #[command(
        after_help = "Examples:\n  wharf node drain node-1a2b        waits until the node is empty\n  wharf node activate node-1a2b     takes new instances again"
    )]
    Drain {
        /// Node id or name
        #[arg(add = crate::complete::nodes())]
        node: String,
        /// Do not wait for the node to be empty
        #[arg(long, short = 'd')]
        detach: bool,
        /// Give up waiting after this long (the drain goes on)
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Let a drained node take instances again
    Activate {
        /// Node id or name
        #[arg(add = crate::complete::nodes())]
        node: String,
    },
    /// Replace nodes' WireGuard keys: each agent makes a new key pair and every peer takes the
    /// new public key within a second
    #[command(
        name = "rotate-keys",
        after_help = "Examples:\n  wharf node rotate-keys node-1a2b    one node\n  wharf node rotate-keys --all        every node"
    )]
    RotateKeys {
        /// Node ids or names
        #[arg(required_unless_present = "all", add = crate::complete::nodes())]
        nodes: Vec<String>,
        /// Every node of the cluster
        #[arg(long, conflicts_with = "nodes")]
        all: bool,
    },
    /// Remove a node: revokes its certificate, and its instances move to other nodes
    Rm {
        /// Node id or name
        #[arg(add = crate::complete::nodes())]
        node: String,
        /// Remove it even though it is still ready
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeTokenCmd {
    /// Create a join token and print it (only its hash is stored on the master)
    #[command(after_help = "\
Examples:
  wharf node token create                     one node, within the hour
  wharf node token create --ttl 24h --uses 5
  wharf agent --join MASTER:7701 --token \"$(wharf node token create)\"")]
    Create {
        /// How long the token stays valid: e.g. 90s, 30m, 1h
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        /// How many nodes may join with it
        #[arg(long, value_name = "N", default_value_t = 1)]
        uses: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Create an API token and print it once (only its hash is stored on the master)
    #[command(after_help = "\
Roles:
  admin      everything
  operator   deploy, scale, remove stacks, drain and label nodes, read logs and the audit
             trail; no token or user administration
  deployer   deploy, update, roll back, scale, read status and logs of its stacks (for CI)
  viewer     read only

Examples:
  wharf token create ci-shop --role deployer --stack shop --ttl 90d
  wharf token create dashboards --role viewer
  WHARF_TOKEN=\"$(wharf token create ci --role deployer --stack 'shop-*')\" wharf stack deploy")]
    Create {
        /// A unique name: the actor in the audit trail, and what `token revoke` takes
        name: String,
        /// What the token may do
        #[arg(long, value_parser = parse_role)]
        role: wharf_types::Role,
        /// Limit the token to stacks matching this pattern (`*` for any run of characters);
        /// repeatable. A scoped token cannot act on the cluster as a whole (nodes, tokens).
        #[arg(long = "stack", value_name = "PATTERN")]
        stacks: Vec<String>,
        /// Lifetime, e.g. 12h, 90d [default: no expiry]
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        ttl: Option<Duration>,
    },
    /// List the tokens: name, role, scope, expiry and last use (never the tokens themselves)
    #[command(visible_alias = "list")]
    Ls,
    /// Revoke a token: requests with it are refused from now on
    #[command(visible_alias = "rm")]
    Revoke {
        /// The token's name
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum HookCmd {
    /// Create a hook and print its secret once: incoming with --stack (prints the URL the git
    /// host POSTs to), outgoing with --url and --events
    #[command(after_help = "\
Examples:
  wharf hook create --stack shop                       a push to main deploys shop again
  wharf hook create --stack shop --ref 'refs/tags/v*' --provider gitlab
  wharf hook create --url https://ci.example.com/wharf --events deploy.succeeded,deploy.failed

Incoming: give the git host the URL and the secret (GitHub and Gitea sign the body with it,
GitLab sends it as X-Gitlab-Token). Outgoing: each delivery carries X-Wharf-Event,
X-Wharf-Delivery (the same on every retry) and X-Wharf-Signature-256: sha256=HMAC of the body.
Event kinds: deploy.started, deploy.succeeded, deploy.failed, deploy.rolled_back, image.pushed,
scan.found.")]
    Create {
        /// Incoming: the stack a matching push deploys again
        #[arg(long, conflicts_with_all = ["url", "events"], required_unless_present = "url")]
        stack: Option<String>,
        /// Incoming: the ref a push must be to (`*` for any run of characters)
        #[arg(
            long = "ref",
            value_name = "REF",
            default_value = "refs/heads/main",
            requires = "stack"
        )]
        git_ref: String,
        /// Incoming: github, gitlab or gitea
        #[arg(long, value_parser = wharf_types::HookProvider::parse, default_value = "github", requires = "stack")]
        provider: wharf_types::HookProvider,
        /// Outgoing: where events are POSTed (http or https)
        #[arg(long, requires = "events")]
        url: Option<String>,
        /// Outgoing: the event kinds to send, comma-separated
        #[arg(long, value_delimiter = ',', requires = "url")]
        events: Vec<String>,
    },
    /// List the hooks (never their secrets)
    #[command(visible_alias = "list")]
    Ls,
    /// An outgoing hook's last deliveries, with their tries
    Deliveries {
        /// The hook's id
        hook: String,
    },
    /// Remove a hook (and its delivery log)
    #[command(visible_alias = "remove")]
    Rm {
        /// The hook's id
        hook: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Add a user; without --password-stdin, prints a one-time invitation code the user
    /// exchanges for a session (`wharf login URL --user NAME --invitation CODE`), valid 7 days
    Add {
        name: String,
        #[arg(long, value_parser = parse_role)]
        role: wharf_types::Role,
        /// Read the user's password from standard input instead
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the users and their roles
    #[command(visible_alias = "list")]
    Ls,
    /// Remove a user and end its sessions
    Rm { name: String },
    /// Set a user's password (asks for it, or reads it with --password-stdin); without NAME,
    /// change your own, logged in as a user (asks for the current one first; with
    /// --password-stdin, the current one on the first line and the new one on the second)
    Passwd {
        name: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ObjectCmd {
    /// Create one, or a new version of it, from a file or standard input (at most 500 KiB);
    /// the value is sealed and never shown again. The services that use it roll to the new
    /// version
    Create {
        name: String,
        /// The file to read, or `-` for standard input
        #[arg(short = 'f', long = "file", value_name = "FILE|-")]
        file: Option<PathBuf>,
        /// `-`: read standard input (as `docker secret create NAME -`)
        #[arg(value_name = "-", hide = true)]
        dash: Option<String>,
    },
    /// List them and their newest versions
    #[command(visible_alias = "list")]
    Ls,
    /// Show the versions of one (when, by whom, how large): never its value
    Inspect { name: String },
    /// Remove one and every version of it (refused while a service uses it)
    Rm { name: String },
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Show the policy in force: each rule, what it refuses, what is allowed (for every stack
    /// and for stacks by name), and the policy file key that allows it
    Show,
}

#[derive(Subcommand, Debug)]
pub enum ScanCmd {
    /// The vulnerability database: `wharf scan db import DIR`, `wharf scan db info`
    #[command(subcommand)]
    Db(ScanDbCmd),
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// List the images of the cluster's registry (by tag) with their scans' findings by
    /// severity (every pushed image is scanned against the imported advisories)
    #[command(
        visible_alias = "list",
        after_help = "Examples:\n  wharf image ls\n  wharf image ls -o json"
    )]
    Ls,
    /// Read the image's OS packages on a node whose engine has it (Debian's dpkg, Alpine's apk)
    /// and list the advisories of the vulnerability database that affect them, worst first
    #[command(after_help = "\
Exits 0 whatever it finds; --fail-on SEVERITY exits 1 when a finding is that bad or worse
(for CI). Import advisories first: `wharf scan db import DIR`.

Examples:
  wharf image scan shop/web:1.4
  wharf image scan debian:12 --fail-on critical -o json")]
    Scan {
        image: String,
        /// Exit 1 when a finding is this bad or worse: critical, high, medium, low
        #[arg(long, value_name = "SEVERITY", value_parser = ["critical", "high", "medium", "low"])]
        fail_on: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScanDbCmd {
    /// Add the OSV advisories of every `*.json` file under DIR (one record per file, or an
    /// array), e.g. an unpacked export of Debian's or Alpine's OSV data; an advisory already
    /// there is replaced. A bad file is named with its line and column, and its batch changes
    /// nothing
    #[command(
        after_help = "Examples:\n  wharf scan db import ./osv/debian\n  wharf scan db import ./osv -o json"
    )]
    Import {
        /// A directory (searched recursively) or one file
        dir: std::path::PathBuf,
    },
    /// How many advisories and packages the database holds, and when it was last imported into
    Info,
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Replace the master key (crash-safe: the old one works until the new one is in place); on
    /// an autolocked store, make a new unlock key and print it once (the old one stops working)
    Rotate,
}

#[derive(Subcommand, Debug)]
pub enum RegistryCmd {
    /// Remove the blobs no manifest refers to (deleted images, abandoned pushes), once they have
    /// been on disk longer than the grace
    Gc {
        /// Keep unreferenced blobs younger than this (a push in progress has blobs whose
        /// manifest is not there yet)
        #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_duration)]
        grace: std::time::Duration,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// List audit records, oldest first (e.g. `wharf audit ls --actor ci --stack shop --since 1h`)
    #[command(visible_alias = "list")]
    Ls {
        /// Only records of the last DURATION, e.g. 10m, 24h, 7d
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        since: Option<Duration>,
        /// Only records of this token or user
        #[arg(long)]
        actor: Option<String>,
        /// Only records about this stack or its services
        #[arg(long)]
        stack: Option<String>,
    },
    /// Check the chain: exit 0 when every record is in place and unchanged, else exit 1 naming
    /// the first bad record
    Verify,
    /// Print the trail's head (the last record's number and hash): keep it elsewhere, and a
    /// later `audit verify` showing the same record with another hash means the trail was
    /// rewritten
    Head,
}

/// One `--filter KEY=VALUE` of the `ps` commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub key: FilterKey,
    pub value: String,
}

/// What a `--filter` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKey {
    State,
    Health,
    Node,
    Service,
}

/// The keys `--filter` takes, as typed.
const FILTER_KEYS: [(&str, FilterKey); 4] = [
    ("state", FilterKey::State),
    ("health", FilterKey::Health),
    ("node", FilterKey::Node),
    ("service", FilterKey::Service),
];

/// Parses `KEY=VALUE` of `--filter`; errors name the key and what is accepted.
pub fn parse_filter(s: &str) -> Result<Filter, String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!(
            "invalid filter \"{s}\": expected KEY=VALUE, e.g. state=running"
        ));
    };
    let keys: Vec<&str> = FILTER_KEYS.iter().map(|(k, _)| *k).collect();
    let key = FILTER_KEYS
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(k.trim()))
        .map(|(_, key)| *key)
        .ok_or_else(|| {
            format!(
                "unknown filter key \"{k}\" in \"{s}\": use one of {}",
                keys.join(", ")
            )
        })?;
    let value = v.trim().to_string();
    if value.is_empty() {
        return Err(format!("filter \"{s}\" has no value, e.g. {k}=running"));
    }
    Ok(Filter { key, value })
}

/// Parses `--since`/`--until`: a duration ago (`10m`, in the one duration grammar) or an RFC
/// 3339 time (`2026-12-07T09:00:00Z`); Unix seconds.
pub fn parse_when(s: &str) -> Result<i64, String> {
    parse_when_at(s, std::time::SystemTime::now())
}

/// [`parse_when`] at the time `now`.
pub fn parse_when_at(s: &str, now: std::time::SystemTime) -> Result<i64, String> {
    let now = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if let Ok(ago) = wharf_compose::parse_duration(s) {
        return Ok(now - ago.as_secs() as i64);
    }
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map(|t| t.unix_timestamp())
        .map_err(|_| {
            format!(
                "invalid time \"{s}\": use a duration ago (10m, 1h30m) or an RFC 3339 time (2026-12-07T09:00:00Z)"
            )
        })
}

/// Parses `KEY=VALUE` of `--env-add`.
pub fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() && !k.contains(char::is_whitespace) => {
            Ok((k.to_string(), v.to_string()))
        }
        _ => Err(format!(
            "invalid environment variable \"{s}\": expected KEY=VALUE, e.g. LOG_LEVEL=debug"
        )),
    }
}

fn parse_role(s: &str) -> Result<wharf_types::Role, String> {
    wharf_types::Role::parse(s)
}

/// One `SERVICE=N` of `wharf service scale`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScaleTarget {
    pub service: String,
    pub replicas: u32,
}

/// Parses `SERVICE=N`; errors name the bad value.
pub fn parse_scale(s: &str) -> Result<ScaleTarget, String> {
    let Some((service, n)) = s.split_once('=') else {
        return Err(format!(
            "invalid scale target \"{s}\": expected SERVICE=N, e.g. web=3"
        ));
    };
    let service = service.trim();
    if service.is_empty() {
        return Err(format!(
            "invalid scale target \"{s}\": the service name is missing, e.g. web=3"
        ));
    }
    let replicas = n.trim().parse::<u32>().map_err(|_| {
        format!(
            "invalid replica count \"{n}\" in \"{s}\": expected a whole number, e.g. {service}=3"
        )
    })?;
    Ok(ScaleTarget {
        service: service.to_string(),
        replicas,
    })
}

/// Parses a duration with the one grammar of stack files and the CLI
/// ([`wharf_compose::parse_duration`]: `90s`, `5m`, `1h30m`, `250ms`, `1.5s`, `90d`, or a bare
/// number of seconds); the error adds examples.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    wharf_compose::parse_duration(s).map_err(|e| format!("{e}: use e.g. 90s, 5m, 1h30m, 90d"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// A `wharf` command line of the client commands (`flow_tests` runs them too).
    #[derive(Parser, Debug)]
    #[command(name = "wharf")]
    pub(crate) struct Cli {
        #[command(flatten)]
        pub(crate) global: GlobalOpts,
        #[command(subcommand)]
        pub(crate) cmd: ClientCommand,
    }

    pub(crate) fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("wharf").chain(args.iter().copied()))
    }

    #[test]
    fn exec_takes_its_flags_before_the_service_and_the_command_after_the_double_dash() {
        let cli = parse(&[
            "service",
            "exec",
            "-it",
            "shop/web.2",
            "--",
            "sh",
            "-c",
            "ls -la",
        ])
        .expect("parses");
        let ClientCommand::Service(ServiceCmd::Exec {
            service,
            interactive,
            tty,
            command,
        }) = cli.cmd
        else {
            panic!("not an exec: {:?}", cli.cmd);
        };
        assert_eq!(service, "shop/web.2");
        assert!(interactive && tty);
        assert_eq!(
            command,
            ["sh", "-c", "ls -la"],
            "flags after `--` are the command's"
        );
        let cli = parse(&["service", "exec", "web", "--", "ls", "-i"]).expect("parses");
        assert!(
            matches!(cli.cmd, ClientCommand::Service(ServiceCmd::Exec { interactive: false, ref command, .. }) if command == &["ls", "-i"])
        );
        for bad in [
            &["service", "exec", "web"][..],
            &["service", "exec", "web", "--"],
            &["service", "exec", "web", "ls"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn stats_and_top_print_once_with_no_stream() {
        let cli = parse(&["service", "stats", "web", "--no-stream"]).expect("parses");
        assert!(matches!(
            cli.cmd,
            ClientCommand::Service(ServiceCmd::Stats {
                no_stream: true,
                ..
            })
        ));
        let cli = parse(&["top"]).expect("parses");
        assert!(matches!(cli.cmd, ClientCommand::Top { no_stream: false }));
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn help_teaches_with_examples() {
        let mut c = Cli::command();
        for path in [
            &["stack"][..],
            &["stack", "deploy"],
            &["stack", "rm"],
            &["service", "scale"],
            &["service", "logs"],
            &["service", "exec"],
            &["service", "stats"],
            &["top"],
            &["completion"],
        ] {
            let mut sub = &mut c;
            for p in path {
                sub = sub.find_subcommand_mut(p).unwrap();
            }
            let help = sub.render_long_help().to_string();
            assert!(help.contains("Example"), "{path:?}: {help}");
            assert!(help.contains("wharf "), "{path:?}: {help}");
        }
    }

    #[test]
    fn scale_targets_parse() {
        assert_eq!(
            parse_scale("shop/web=3"),
            Ok(ScaleTarget {
                service: "shop/web".into(),
                replicas: 3
            })
        );
        assert_eq!(parse_scale("web=0").unwrap().replicas, 0);
        let e = parse_scale("web").unwrap_err();
        assert!(e.contains("\"web\"") && e.contains("SERVICE=N"), "{e}");
        let e = parse_scale("web=three").unwrap_err();
        assert!(
            e.contains("\"three\"") && e.contains("\"web=three\""),
            "{e}"
        );
        let e = parse_scale("=3").unwrap_err();
        assert!(e.contains("\"=3\""), "{e}");
        assert!(parse_scale("web=-1").unwrap_err().contains("\"-1\""));
    }

    #[test]
    fn scale_errors_reach_the_user_naming_the_value() {
        let e = parse(&["service", "scale", "web=3", "api=x"]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("api=x"), "{text}");
        assert_eq!(e.exit_code(), 2);
        let Cli {
            cmd: ClientCommand::Service(ServiceCmd::Scale { targets, opts }),
            ..
        } = parse(&["service", "scale", "web=3", "shop/api=1", "--detach"]).unwrap()
        else {
            panic!("not a scale")
        };
        assert_eq!(targets.len(), 2);
        assert!(opts.detach);
        assert!(parse(&["service", "scale"]).is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(
            parse_duration("5 minutes")
                .unwrap_err()
                .contains("\"5 minutes\"")
        );
        assert!(parse_duration("m5").is_err());
        assert!(parse_duration("").is_err());
        // One grammar: what a stack file takes, a flag takes, and the other way round.
        for s in [
            "1.5s",
            "2h",
            "500ms",
            "90d",
            "1m30s",
            "30",
            "1h2m3s4ms",
            "5 minutes",
            "-1s",
        ] {
            assert_eq!(
                parse_duration(s).ok(),
                wharf_compose::parse_duration(s).ok(),
                "{s}"
            );
        }
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn log_times_are_a_duration_ago_or_an_rfc3339_time() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        assert_eq!(parse_when_at("10m", now), Ok(1_800_000_000 - 600));
        assert_eq!(parse_when_at("1h30m", now), Ok(1_800_000_000 - 5400));
        assert_eq!(
            parse_when_at("2026-12-07T09:00:00Z", now),
            Ok(1_796_634_000)
        );
        assert_eq!(
            parse_when_at("2026-12-07T10:00:00+01:00", now),
            Ok(1_796_634_000)
        );
        let e = parse_when_at("yesterday", now).unwrap_err();
        assert!(e.contains("\"yesterday\"") && e.contains("RFC 3339"), "{e}");
    }

    #[test]
    fn deploy_flags_and_global_output() {
        let cli = parse(&[
            "stack",
            "deploy",
            "-c",
            "x.yml",
            "--name",
            "shop",
            "--timeout",
            "10s",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        let ClientCommand::Stack(StackCmd::Deploy {
            file, name, opts, ..
        }) = cli.cmd
        else {
            panic!("not a deploy")
        };
        assert_eq!(file.file, vec![PathBuf::from("x.yml")]);
        assert_eq!(name.as_deref(), Some("shop"));
        assert_eq!(opts.timeout, Duration::from_secs(10));
        assert!(!opts.detach);
        let cli = parse(&["-o", "json", "stack", "deploy"]).unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        let ClientCommand::Stack(StackCmd::Deploy { opts, .. }) = cli.cmd else {
            panic!()
        };
        assert_eq!(opts.timeout, Duration::from_secs(300));
        assert!(parse(&["stack", "deploy", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn other_commands_parse() {
        assert!(matches!(
            parse(&["stack", "rm", "shop", "--volumes"]).unwrap().cmd,
            ClientCommand::Stack(StackCmd::Rm {
                volumes: true,
                detach: false,
                ..
            })
        ));
        assert!(matches!(
            parse(&["service", "logs", "-f", "--tail", "5", "web"])
                .unwrap()
                .cmd,
            ClientCommand::Service(ServiceCmd::Logs {
                follow: true,
                tail: Some(5),
                ..
            })
        ));
        assert!(matches!(
            parse(&["completion", "zsh"]).unwrap().cmd,
            ClientCommand::Completion {
                shell: clap_complete::Shell::Zsh
            }
        ));
        assert!(parse(&["completion", "tcsh"]).is_err());
        assert!(matches!(
            parse(&["node", "ls"]).unwrap().cmd,
            ClientCommand::Node(NodeCmd::Ls)
        ));
        assert!(matches!(
            parse(&["context"]).unwrap().cmd,
            ClientCommand::Context { cmd: None }
        ));
    }
}
