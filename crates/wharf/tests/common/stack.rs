//! The one builder of the tests' stack files: services of the test workload (or another image)
//! with what the tests vary, written out as compose YAML.

use std::fmt::Write as _;

use super::HEALTHCHECK;

/// A stack file: its name, services and named volumes.
pub struct Stack {
    name: String,
    services: Vec<Service>,
    volumes: Vec<String>,
}

impl Stack {
    pub fn new(name: &str) -> Stack {
        Stack {
            name: name.to_string(),
            services: vec![],
            volumes: vec![],
        }
    }

    pub fn service(mut self, service: Service) -> Stack {
        self.services.push(service);
        self
    }

    /// A named volume (`volumes: {NAME: {}}`).
    pub fn volume(mut self, name: &str) -> Stack {
        self.volumes.push(name.to_string());
        self
    }

    pub fn yaml(&self) -> String {
        let mut y = format!("name: {}\nservices:\n", self.name);
        for s in &self.services {
            s.write(&mut y);
        }
        if !self.volumes.is_empty() {
            y.push_str("volumes:\n");
            for v in &self.volumes {
                let _ = writeln!(y, "  {v}: {{}}");
            }
        }
        y
    }
}

/// One service of a [`Stack`].
#[derive(Clone)]
pub struct Service {
    name: String,
    image: String,
    env: Vec<(String, String)>,
    grace: bool,
    replicas: Option<u32>,
    deploy: String,
    healthcheck: String,
    extra: String,
}

impl Service {
    /// The test workload (`wharf-testapp:latest`) as service `name`, stopped within 2 s.
    pub fn testapp(name: &str) -> Service {
        Service {
            name: name.to_string(),
            image: "wharf-testapp:latest".to_string(),
            env: vec![],
            grace: true,
            replicas: None,
            deploy: String::new(),
            healthcheck: String::new(),
            extra: String::new(),
        }
    }

    pub fn image(mut self, image: &str) -> Service {
        self.image = image.to_string();
        self
    }

    /// No `stop_grace_period` (the engine's default).
    pub fn default_grace(mut self) -> Service {
        self.grace = false;
        self
    }

    /// `KEY: value` in the environment, `value` as written (quote what must stay a string).
    pub fn env(mut self, key: &str, value: &str) -> Service {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    pub fn replicas(mut self, n: u32) -> Service {
        self.replicas = Some(n);
        self
    }

    /// YAML lines under `deploy:` (indented 6 spaces), after `replicas`.
    pub fn deploy(mut self, yaml: &str) -> Service {
        self.deploy.push_str(yaml);
        self
    }

    /// The fast [`HEALTHCHECK`] most tests use.
    pub fn healthcheck(self) -> Service {
        self.healthcheck_with("")
    }

    /// [`HEALTHCHECK`] with more of its keys (indented 6 spaces), e.g. a `start_period`.
    pub fn healthcheck_with(mut self, more: &str) -> Service {
        self.healthcheck = format!("{HEALTHCHECK}{more}");
        self
    }

    /// More YAML of the service (indented 4 spaces), last.
    pub fn extra(mut self, yaml: &str) -> Service {
        self.extra.push_str(yaml);
        self
    }

    fn write(&self, y: &mut String) {
        let _ = write!(y, "  {}:\n    image: {}\n", self.name, self.image);
        if !self.env.is_empty() {
            y.push_str("    environment:\n");
            for (k, v) in &self.env {
                let _ = writeln!(y, "      {k}: {v}");
            }
        }
        if self.grace {
            y.push_str("    stop_grace_period: 2s\n");
        }
        if self.replicas.is_some() || !self.deploy.is_empty() {
            y.push_str("    deploy:\n");
            if let Some(n) = self.replicas {
                let _ = writeln!(y, "      replicas: {n}");
            }
            y.push_str(&self.deploy);
        }
        y.push_str(&self.healthcheck);
        y.push_str(&self.extra);
    }
}

/// A stack file with one service of the test workload. `extra` is YAML appended inside the
/// service.
pub fn testapp_stack(stack: &str, service: &str, replicas: u32, extra: &str) -> String {
    Stack::new(stack)
        .service(Service::testapp(service).replicas(replicas).extra(extra))
        .yaml()
}

/// A stack file with one service `web` of the test workload, health-checked. `extra` is YAML
/// indented for the service (4 spaces), `deploy_extra` YAML indented inside `deploy:` (6 spaces).
pub fn web_stack(stack: &str, replicas: u32, deploy_extra: &str, extra: &str) -> String {
    Stack::new(stack)
        .service(
            Service::testapp("web")
                .replicas(replicas)
                .deploy(deploy_extra)
                .healthcheck()
                .extra(extra),
        )
        .yaml()
}
