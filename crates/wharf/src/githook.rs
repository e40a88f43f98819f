//! `wharf git-hook` (hidden): the `pre-receive` hook of a stack's repository (`wharf_master::git`).
//! For a push to `main` (or `master`): check the commit out, load its stack file, build each
//! `build:` service's image on this host's engine, push it to the cluster's registry as
//! `STACK/SERVICE:COMMIT`, deploy the stack file at that commit with those images (the master
//! pins them by digest) and follow the deployment to its end. Everything it prints reaches the
//! pusher as `remote:` lines; a failure exits 1, so git refuses the push and the branch keeps
//! the commit that last deployed (the old version keeps serving). It acts as the pusher: their
//! token, from the hook's environment (`WHARF_TOKEN`), with their rights.

use std::io::Read as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use wharf_client::Client;
use wharf_types::{DeployRequest, DeploymentState};

/// The stack files a repository may have, first found wins.
const STACK_FILES: &[&str] = &[
    "wharf.yml",
    "wharf.yaml",
    "compose.yaml",
    "compose.yml",
    "docker-compose.yml",
    "docker-compose.yaml",
];

/// The branches whose pushes deploy.
const DEPLOYED: &[&str] = &["refs/heads/main", "refs/heads/master"];

/// How long a push waits for its deployment.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(600);

/// What the master put in the hook's environment.
struct Push {
    stack: String,
    pusher: String,
    url: String,
    token: String,
}

fn env(name: &str) -> anyhow::Result<String> {
    std::env::var(name).with_context(|| {
        format!("{name} is not set: `wharf git-hook` runs as a repository's hook, under the master")
    })
}

pub async fn run() -> ExitCode {
    match hook().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("wharf: push refused: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn hook() -> anyhow::Result<()> {
    let push = Push {
        stack: env("WHARF_GIT_STACK")?,
        pusher: env("WHARF_GIT_PUSHER")?,
        url: env("WHARF_URL")?,
        token: env("WHARF_TOKEN")?,
    };
    let mut input = String::new();
    std::io::stdin().read_to_string(&mut input)?;
    for line in input.lines() {
        let mut f = line.split_whitespace();
        let (Some(_old), Some(new), Some(refname)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if new.bytes().all(|b| b == b'0') {
            println!("wharf: {refname} deleted (nothing deployed)");
        } else if !DEPLOYED.contains(&refname) {
            println!("wharf: {refname} kept; only main (or master) deploys");
        } else {
            deploy(&push, new, refname).await?;
        }
    }
    Ok(())
}

async fn deploy(push: &Push, commit: &str, refname: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let short = &commit[..commit.len().min(12)];
    println!("wharf: {refname} at {short}: checking out");
    let tree = tempfile::tempdir()?;
    checkout(commit, tree.path())?;
    let file = STACK_FILES
        .iter()
        .map(|f| tree.path().join(f))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{short} has no stack file (one of {})",
                STACK_FILES.join(", ")
            )
        })?;
    let opts = wharf_compose::LoadOptions {
        stack_name: Some(push.stack.clone()),
        // Never the hook's environment: it holds the pusher's token.
        env: Default::default(),
        allow_outside: false,
        profiles: vec![],
    };
    let loaded = wharf_compose::load_file(&file, &opts).map_err(|errs| {
        let text: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
        anyhow::anyhow!("the stack file does not load:\n{}", text.join("\n"))
    })?;
    let mut spec = loaded.spec;
    let host = registry_host(&push.url)?;
    let docker = wharf_agent::driver::docker::DockerDriver::connect()
        .await
        .map_err(|e| anyhow::anyhow!("this host's Docker engine, to build with: {}", e.message))?;
    let engine = bollard::Docker::connect_with_local_defaults()?;
    for (name, svc) in spec.services.iter_mut() {
        let Some(build) = svc.build.take() else {
            continue;
        };
        let image = format!("{host}/{}/{name}:{short}", push.stack);
        println!("wharf: {name}: building {image}");
        docker
            .build_image(&image, &build, svc.container.platform.as_deref())
            .await
            .map_err(|e| anyhow::anyhow!("{name}: {}", e.message))?;
        println!("wharf: {name}: pushing");
        push_image(&engine, &image, &host, &push.token).await?;
        svc.image = Some(image);
    }
    let client = match std::env::var("WHARF_CA_FINGERPRINT") {
        Ok(fp) if !fp.is_empty() => Client::pinned(push.url.clone(), push.token.clone(), &fp)
            .map_err(|e| anyhow::anyhow!("the API's CA: {e}"))?,
        _ => Client::new(push.url.clone(), push.token.clone()),
    };
    let req = DeployRequest {
        secret_values: loaded.secret_values,
        config_values: loaded.config_values,
        sources: loaded.sources,
        trigger: Some(format!(
            "git push of {short} to {refname} by {}",
            push.pusher
        )),
        ..DeployRequest::of(spec)
    };
    println!("wharf: deploying stack {}", push.stack);
    let resp = client
        .deploy_stack(&push.stack, &req)
        .await
        .map_err(|e| anyhow::anyhow!("the deploy was refused: {e}"))?;
    let Some(id) = resp.deployment_id else {
        println!("wharf: nothing to change: {short} runs already");
        return Ok(());
    };
    follow(&client, &id).await?;
    println!(
        "wharf: {short} deployed in {:.1} s (deployment {id})",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Write `commit`'s tree into `dir` (the pushed objects are visible to the hook's git).
fn checkout(commit: &str, dir: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("git")
        .args(["archive", "--format=tar", commit])
        .output()
        .context("cannot run git archive")?;
    if !out.status.success() {
        bail!(
            "git archive {commit}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    tar::Archive::new(&out.stdout[..])
        .unpack(dir)
        .context("cannot unpack the commit")?;
    Ok(())
}

/// The registry's `host:port`: the API's.
fn registry_host(url: &str) -> anyhow::Result<String> {
    let rest = url
        .split_once("://")
        .map(|(_, r)| r)
        .with_context(|| format!("{url} is not a URL"))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_string())
}

async fn push_image(
    engine: &bollard::Docker,
    image: &str,
    host: &str,
    token: &str,
) -> anyhow::Result<()> {
    let (name, tag) = image.rsplit_once(':').context("an image with a tag")?;
    let options = bollard::query_parameters::PushImageOptionsBuilder::default()
        .tag(tag)
        .build();
    let credentials = bollard::auth::DockerCredentials {
        username: Some("wharf".into()),
        password: Some(token.to_string()),
        serveraddress: Some(host.to_string()),
        ..Default::default()
    };
    let mut stream = engine.push_image(name, Some(options), Some(credentials));
    while let Some(item) = stream.next().await {
        let info = item.with_context(|| format!("pushing {image}"))?;
        if let Some(message) = info.error_detail.and_then(|d| d.message) {
            bail!("pushing {image}: {message}");
        }
    }
    Ok(())
}

/// Follow deployment `id` to its end, printing each change of its services' progress.
async fn follow(client: &Client, id: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEPLOY_TIMEOUT;
    let mut last = String::new();
    loop {
        let d = client
            .deployment(id)
            .await
            .map_err(|e| anyhow::anyhow!("reading deployment {id}: {e}"))?;
        let now: Vec<String> = d
            .services
            .iter()
            .map(|s| {
                format!(
                    "{}: {}/{} updated, {} ready",
                    s.service, s.updated, s.desired, s.ready
                )
            })
            .collect();
        let now = now.join("; ");
        if now != last {
            println!("wharf: {now}");
            last = now;
        }
        match d.state {
            DeploymentState::InProgress => {}
            DeploymentState::Succeeded => return Ok(()),
            other => bail!(
                "deployment {id} {}: {}",
                format!("{other:?}").to_lowercase(),
                d.message.unwrap_or_default()
            ),
        }
        if Instant::now() > deadline {
            bail!(
                "deployment {id} did not end within {} s",
                DEPLOY_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_registry_is_the_apis_address() {
        assert_eq!(
            super::registry_host("http://127.0.0.1:7700").unwrap(),
            "127.0.0.1:7700"
        );
        assert_eq!(
            super::registry_host("https://m.example:7700/").unwrap(),
            "m.example:7700"
        );
        assert!(super::registry_host("m.example").is_err());
    }
}
