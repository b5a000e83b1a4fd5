//! `DockerRuntime` against the real engine (`DOCKER_HOST`, default the local socket), with
//! the locally built `monza-test/busybox:latest` image. In CI (`CI=true`) a missing engine
//! fails these tests; elsewhere they are skipped with one loud line.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns: a panic is the failure report

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use monza_agent_protocol::{Hello, Message, PROTOCOL_VERSION, read_message, write_message};
use monza_docker::{DockerRuntime, DockerSettings, SANDBOX_CAPABILITIES};
use monza_domain::testing::fixtures::{self, random_bytes};
use monza_domain::testing::require;
use monza_domain::{
    BuildSpec, Command, ContainerRuntime, ContainerSpec, Error, ExecEvent, ExecOutput, ExecRequest,
    FileProblem, ImageSource, Mount, OutputStream, ProcessEvent, ProcessRequest, ProcessSignal,
    RunOptions, SandboxId, Template, TenantId, UploadFile, WriteOptions,
};
use serde_json::json;

const IMAGE: &str = "monza-test/busybox:latest";
/// Every container these tests create carries it, so a leftover can be found and swept.
const TEST_LABEL: &str = "monza.test";

/// A runtime without the agent: every command goes through Docker exec.
async fn runtime() -> Option<DockerRuntime> {
    let settings = DockerSettings {
        agent: false,
        ..DockerSettings::from_docker_host_env()
    };
    let what = format!("Docker engine at {}", settings.host);
    let runtime = DockerRuntime::new(settings).expect("valid DOCKER_HOST");
    let ping = runtime.ping().await;
    require(&what, ping)?;
    Some(runtime)
}

/// A runtime with the agent, whose binary and socket directories live in a temporary
/// directory removed with it (declare it before the sandboxes, so it outlives them).
struct AgentRuntime {
    runtime: DockerRuntime,
    dir: tempfile::TempDir,
}

impl std::ops::Deref for AgentRuntime {
    type Target = DockerRuntime;
    fn deref(&self) -> &DockerRuntime {
        &self.runtime
    }
}

async fn agent_runtime() -> Option<AgentRuntime> {
    let plain = runtime().await?;
    let dir = tempfile::Builder::new()
        .prefix("monza-agent-test-")
        .tempdir()
        .unwrap();
    let runtime = DockerRuntime::new(DockerSettings {
        agent: true,
        agent_dir: dir.path().to_owned(),
        ..plain.settings().clone()
    })
    .unwrap();
    runtime.install_agent().expect("installing the agent");
    Some(AgentRuntime { runtime, dir })
}

/// Runs an exec test once through Docker exec and once through the agent; `agent` says
/// which, and the test checks afterwards that the agent path really served its commands.
async fn on_both_paths<F, Fut>(test: F)
where
    F: Fn(DockerRuntime, bool) -> Fut,
    Fut: Future<Output = Vec<String>>,
{
    let Some(plain) = runtime().await else {
        return;
    };
    let containers = test(plain, false).await;
    assert!(!containers.is_empty());
    let with_agent = agent_runtime().await.unwrap();
    let containers = test(with_agent.runtime.clone(), true).await;
    for id in containers {
        assert!(
            with_agent.agent_execs(&id) > 0,
            "no command of container {id} went through the agent"
        );
    }
}

/// The test image's template; `Template { image, ..template() }` for another image or a build.
fn template() -> Template {
    Template {
        container_env: BTreeMap::from([("GREETING".into(), "hello sandbox".into())]),
        forward_ports: vec![],
        run_options: RunOptions {
            labels: BTreeMap::from([(TEST_LABEL.into(), "docker-adapter".into())]),
            ..RunOptions::default()
        },
        ..fixtures::template("docker-adapter-test", IMAGE)
    }
}

fn spec(template: Template) -> ContainerSpec {
    ContainerSpec {
        sandbox_id: SandboxId::new_random(),
        tenant: TenantId::new("tests").unwrap(),
        template,
    }
}

/// Removes its container when dropped, even when the test fails.
struct Sandbox {
    runtime: DockerRuntime,
    id: String,
}

impl Sandbox {
    async fn create(runtime: &DockerRuntime, spec: &ContainerSpec) -> Self {
        let created = runtime.create(spec).await.expect("create");
        Self {
            runtime: runtime.clone(),
            id: created.id,
        }
    }

    async fn started(runtime: &DockerRuntime, template: Template) -> Self {
        let sandbox = Self::create(runtime, &spec(template)).await;
        runtime.start(&sandbox.id).await.expect("start");
        sandbox
    }

    async fn sh(&self, line: &str) -> ExecOutput {
        self.runtime
            .exec(&self.id, &shell(line))
            .await
            .expect("exec")
    }

    fn inspect_container(&self) -> docker_api::models::ContainerInspect200Response {
        let id = self.id.clone();
        on_fresh_runtime(move |docker| async move {
            docker.containers().get(id).inspect().await.unwrap()
        })
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let id = self.id.clone();
        let settings = self.runtime.settings().clone();
        // A fresh runtime on its own thread: the test's runtime may be gone or blocked here.
        let result = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async { DockerRuntime::new(settings).unwrap().remove(&id).await })
        })
        .join();
        if !matches!(result, Ok(Ok(()))) {
            eprintln!("could not remove test container {}: {result:?}", self.id);
        }
    }
}

/// Runs `f` with a docker-api client of its own, on a thread and runtime of its own.
fn on_fresh_runtime<T, F, Fut>(f: F) -> T
where
    T: Send + 'static,
    F: FnOnce(docker_api::Docker) -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let host = DockerSettings::from_docker_host_env().host;
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f(docker_api::Docker::new(host).unwrap()))
    })
    .join()
    .unwrap()
}

fn shell(line: &str) -> ExecRequest {
    ExecRequest {
        command: Command::Shell(line.into()),
        workdir: None,
        env: BTreeMap::new(),
        user: None,
        max_output_bytes: 64 * 1024,
        timeout: Some(Duration::from_secs(30)),
        stdin: None,
    }
}

/// Peak resident memory of this process, in bytes (`VmHWM`).
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread")]
async fn a_started_sandbox_has_its_env_labels_ports_limits_and_hardening() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let mut t = template();
    t.forward_ports = vec![8080, 9090];
    let spec = spec(t);
    let created = runtime.create(&spec).await.unwrap();
    let sandbox = Sandbox {
        runtime: runtime.clone(),
        id: created.id.clone(),
    };
    assert_eq!(created.image, IMAGE);

    let ports = runtime.start(&sandbox.id).await.unwrap();
    assert_eq!(
        ports.iter().map(|p| p.container_port).collect::<Vec<_>>(),
        [8080, 9090]
    );
    assert!(ports.iter().all(|p| p.host_port != 0));

    let inspect = sandbox.inspect_container();
    assert_eq!(
        inspect.name.as_deref(),
        Some(format!("/monza-{}", spec.sandbox_id).as_str())
    );
    let config = inspect.config.unwrap();
    let labels = config.labels.unwrap();
    assert_eq!(labels["monza.sandbox_id"], spec.sandbox_id.to_string());
    assert_eq!(labels["monza.managed"], "true");
    assert_eq!(labels["monza.template"], "docker-adapter-test");
    assert_eq!(labels["monza.tenant"], "tests");
    assert!(
        config
            .env
            .unwrap()
            .contains(&"GREETING=hello sandbox".to_owned())
    );
    let host = inspect.host_config.unwrap();
    assert_eq!(host["Memory"], json!(512 * 1024 * 1024));
    assert_eq!(host["MemorySwap"], json!(512 * 1024 * 1024));
    assert_eq!(host["NanoCpus"], json!(1_000_000_000));
    assert_eq!(host["PidsLimit"], json!(512));
    assert_eq!(host["Privileged"], json!(false));
    assert_eq!(host["SecurityOpt"], json!(["no-new-privileges"]));
    assert_eq!(host["CapDrop"], json!(["ALL"]));
    assert_eq!(host["CapAdd"], json!(SANDBOX_CAPABILITIES));
    assert_eq!(host["Binds"], json!(null), "no bind mounts");
    for port in ["8080/tcp", "9090/tcp"] {
        assert_eq!(
            host["PortBindings"][port][0]["HostIp"],
            json!("127.0.0.1"),
            "{port}"
        );
    }
    let actual = inspect.network_settings.unwrap().ports.unwrap();
    let actual_8080 = actual["8080/tcp"].as_ref().unwrap();
    assert!(
        actual_8080
            .iter()
            .all(|b| b.host_ip.as_deref() == Some("127.0.0.1")),
        "{actual_8080:?}"
    );

    // What the process inside sees.
    let env = sandbox
        .sh("echo \"$GREETING\"; pwd; test -d /workspace && echo ws")
        .await;
    assert_eq!(env.stdout, "hello sandbox\n/workspace\nws\n", "{env:?}");
    let status = sandbox
        .sh("grep -E '^(NoNewPrivs|CapEff)' /proc/self/status")
        .await;
    assert!(status.stdout.contains("NoNewPrivs:\t1"), "{status:?}");
    // CHOWN 0, DAC_OVERRIDE 1, FOWNER 3, FSETID 4, KILL 5, SETGID 6, SETUID 7, NET_BIND_SERVICE 10.
    assert!(
        status.stdout.contains("CapEff:\t00000000000004fb"),
        "{status:?}"
    );

    // A listener in the sandbox is reachable on the published port, on the loopback address.
    let listen = sandbox
        .sh("nc -ll -p 8080 -e /bin/echo hi >/dev/null 2>&1 &")
        .await;
    assert_eq!(listen.exit_code, 0, "{listen:?}");
    let host_port = ports[0].host_port;
    let reply = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = TcpStream::connect(("127.0.0.1", host_port)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut text = String::new();
                s.read_to_string(&mut text)?;
                Ok(text)
            });
            match attempt {
                Ok(text) if text == "hi\n" => return text,
                _ if Instant::now() > deadline => {
                    panic!("no reply on port {host_port}: {attempt:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(reply, "hi\n");

    // The keep-alive command stops at once on SIGTERM.
    let id = sandbox.id.clone();
    let stop_took = on_fresh_runtime(move |docker| async move {
        let started = Instant::now();
        docker
            .containers()
            .get(id)
            .stop(
                &docker_api::opts::ContainerStopOpts::builder()
                    .wait(Duration::from_secs(10))
                    .build(),
            )
            .await
            .unwrap();
        started.elapsed()
    });
    assert!(
        stop_took < Duration::from_secs(3),
        "docker stop took {stop_took:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_options_lower_limits_and_apply_init_hostname_shm_and_extra_caps() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let mut t = template();
    t.run_options.cpus = Some(0.5);
    t.run_options.memory_bytes = Some(256 * 1024 * 1024);
    t.run_options.init = true;
    t.run_options.hostname = Some("devbox".into());
    t.run_options.shm_size_bytes = Some(128 * 1024 * 1024);
    t.run_options.cap_add = vec!["SYS_PTRACE".into()];
    t.container_user = Some("1234".into());
    t.workspace_folder = "/work/space".into();
    let sandbox = Sandbox::started(&runtime, t).await;
    let inspect = sandbox.inspect_container();
    let host = inspect.host_config.unwrap();
    assert_eq!(host["Memory"], json!(256 * 1024 * 1024));
    assert_eq!(host["NanoCpus"], json!(500_000_000));
    assert_eq!(host["Init"], json!(true));
    assert_eq!(host["ShmSize"], json!(128 * 1024 * 1024));
    assert_eq!(host["Privileged"], json!(false));
    assert!(
        host["CapAdd"]
            .as_array()
            .unwrap()
            .contains(&json!("SYS_PTRACE"))
    );
    let out = sandbox.sh("hostname; id -u; pwd").await;
    assert_eq!(out.stdout, "devbox\n1234\n/work/space\n", "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_reports_exit_codes_and_keeps_streams_apart_and_in_order() {
    on_both_paths(|runtime, agent| async move {
        let sandbox = Sandbox::started(&runtime, template()).await;

        let out = sandbox
            .sh("echo out1; sleep 0.2; echo err1 >&2; sleep 0.2; echo out2; exit 3")
            .await;
        assert_eq!(out.exit_code, 3);
        assert_eq!(out.stdout, "out1\nout2\n");
        assert_eq!(out.stderr, "err1\n");
        assert_eq!(out.output, "out1\nerr1\nout2\n");
        assert!(!out.truncated && !out.timed_out);
        assert!(
            out.duration >= Duration::from_millis(400),
            "{:?}",
            out.duration
        );

        for user in [Some("4321".to_owned()), None] {
            let argv = ExecRequest {
                command: Command::Argv(vec!["/bin/echo".into(), "a  b".into(), "$HOME".into()]),
                workdir: Some("/etc".into()),
                env: BTreeMap::from([("EXTRA".into(), "x=y".into())]),
                user: user.clone(),
                ..shell("")
            };
            let out = runtime.exec(&sandbox.id, &argv).await.unwrap();
            assert_eq!((out.exit_code, out.stdout.as_str()), (0, "a  b $HOME\n"));
            let probe = ExecRequest {
                command: Command::Shell("pwd; echo \"$EXTRA\"; id -u".into()),
                ..argv
            };
            let out = runtime.exec(&sandbox.id, &probe).await.unwrap();
            let uid = user.as_deref().unwrap_or("0");
            assert_eq!(out.stdout, format!("/etc\nx=y\n{uid}\n"), "{out:?}");
        }

        let missing = runtime
            .exec(&sandbox.id, &shell("no-such-command"))
            .await
            .unwrap();
        assert_eq!(missing.exit_code, 127);
        assert!(missing.stderr.contains("not found"), "{missing:?}");
        let missing_argv = ExecRequest {
            command: Command::Argv(vec!["no-such-program".into()]),
            ..shell("")
        };
        let missing = runtime.exec(&sandbox.id, &missing_argv).await.unwrap();
        assert_eq!(missing.exit_code, 127, "{missing:?}");

        let lossy = sandbox.sh("printf 'a\\377b'").await;
        assert_eq!(lossy.stdout, "a\u{fffd}b");

        // MONZA_AGENT=off: nothing of the agent's in the sandbox.
        let mounts = sandbox
            .sh("ls -d /.monza /.monza-agent 2>/dev/null; echo ${MONZA_AGENT_SOCKET:-unset}")
            .await;
        let expected = if agent {
            // The agent hides its own variable from the commands it runs (a command that
            // falls back to Docker exec sees it).
            "/.monza\n/.monza-agent\nunset\n"
        } else {
            "unset\n"
        };
        assert_eq!(mounts.stdout, expected, "agent: {agent}");
        vec![sandbox.id.clone()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_output_is_capped_with_bounded_memory() {
    on_both_paths(|runtime, agent| async move {
        let sandbox = Sandbox::started(&runtime, template()).await;
        // Warm the path first, so the agent's connection is not counted as growth.
        sandbox.sh("true").await;
        let before = peak_rss();
        let request = ExecRequest {
            max_output_bytes: 1000,
            ..shell("yes | head -c 50000000; echo done >&2")
        };
        let out = runtime.exec(&sandbox.id, &request).await.unwrap();
        let growth = peak_rss().saturating_sub(before);
        assert_eq!(out.exit_code, 0);
        assert!(out.truncated);
        assert_eq!(out.stdout.len(), 1000);
        assert_eq!(out.output.len(), 1000);
        assert_eq!(
            out.stderr, "done\n",
            "stderr keeps its own budget (agent: {agent})"
        );
        assert!(
            growth < 16 * 1024 * 1024,
            "peak RSS grew by {growth} bytes for 50 MB of output (agent: {agent})"
        );
        vec![sandbox.id.clone()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_timeout_kills_the_command_and_its_children() {
    on_both_paths(|runtime, agent| async move {
        let sandbox = Sandbox::started(&runtime, template()).await;
        let request = ExecRequest {
            timeout: Some(Duration::from_secs(1)),
            ..shell("echo started; sleep 30 & sleep 31; echo never")
        };
        let started = Instant::now();
        let out = runtime.exec(&sandbox.id, &request).await.unwrap();
        let took = started.elapsed();
        assert!(out.timed_out, "{out:?}");
        assert!(took < Duration::from_secs(6), "took {took:?}");
        assert_eq!(out.stdout, "started\n");
        // The same code on both paths: the SIGKILL the timeout sends, as 128 + 9.
        assert_eq!(out.exit_code, 137, "agent: {agent}: {out:?}");
        let ps = sandbox
            .sh("ps -o pid,args | grep 'sleep 3[01]' || true")
            .await;
        assert_eq!(ps.stdout, "", "processes left behind: {ps:?}");

        let argv = ExecRequest {
            command: Command::Argv(vec!["sleep".into(), "30".into()]),
            ..request
        };
        let out = runtime.exec(&sandbox.id, &argv).await.unwrap();
        assert!(
            out.timed_out && out.duration < Duration::from_secs(6),
            "{out:?}"
        );
        assert_eq!(out.exit_code, 137, "agent: {agent}: {out:?}");
        vec![sandbox.id.clone()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_feeds_stdin_then_closes_it() {
    on_both_paths(|runtime, agent| async move {
        let sandbox = Sandbox::started(&runtime, template()).await;
        let with = |line: &str, stdin: &[u8]| ExecRequest {
            stdin: Some(stdin.to_vec()),
            ..shell(line)
        };
        // Read to its end: the command sees EOF, so it ends.
        let out = runtime
            .exec(&sandbox.id, &with("cat; echo end", b"one\ntwo\n"))
            .await
            .unwrap();
        assert_eq!(out.stdout, "one\ntwo\nend\n", "agent: {agent}: {out:?}");
        assert_eq!(out.exit_code, 0);
        // More than a pipe holds (4 MiB), counted on the other side, raw bytes included.
        let big: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
        let out = runtime
            .exec(&sandbox.id, &with("wc -c", &big))
            .await
            .unwrap();
        assert_eq!(out.stdout.trim(), "4194304", "agent: {agent}: {out:?}");
        // A command that never reads it still ends, with its output.
        let out = runtime
            .exec(&sandbox.id, &with("echo ignored", &big))
            .await
            .unwrap();
        assert_eq!(out.stdout, "ignored\n", "agent: {agent}: {out:?}");
        // Without stdin, a reader sees EOF at once rather than waiting for ever.
        let out = runtime
            .exec(&sandbox.id, &shell("cat; echo eof"))
            .await
            .unwrap();
        assert_eq!(out.stdout, "eof\n", "agent: {agent}: {out:?}");
        assert!(!out.timed_out);
        vec![sandbox.id.clone()]
    })
    .await;
}

/// The next event of a streamed exec, within 30 s.
async fn next_event(events: &mut monza_domain::ExecEvents) -> ExecEvent {
    tokio::time::timeout(Duration::from_secs(30), events.next())
        .await
        .expect("an event within 30 s")
        .expect("the stream ended before its exit")
        .expect("an event, not an error")
}

/// Every event of a streamed exec up to its exit: the bytes of each stream, and the exit.
async fn drain(mut events: monza_domain::ExecEvents) -> (Vec<u8>, Vec<u8>, ExecEvent) {
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    loop {
        match next_event(&mut events).await {
            ExecEvent::Output { stream, data } => match stream {
                OutputStream::Stdout => stdout.extend_from_slice(&data),
                OutputStream::Stderr => stderr.extend_from_slice(&data),
            },
            exit @ ExecEvent::Exit { .. } => {
                assert!(events.next().await.is_none(), "nothing after the exit");
                return (stdout, stderr, exit);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_streamed_exec_delivers_output_before_the_command_ends_raw_and_in_full() {
    on_both_paths(|runtime, agent| async move {
        let sandbox = Sandbox::started(&runtime, template()).await;
        // The command waits for a file only this test creates once it saw the first chunk:
        // the chunk cannot have come at the end.
        let gate = "/workspace/gate";
        let request = shell(&format!(
            "echo first; i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo second >&2; exit 4"
        ));
        let mut events = runtime.exec_stream(&sandbox.id, &request).await.unwrap();
        assert_eq!(
            next_event(&mut events).await,
            ExecEvent::Output {
                stream: OutputStream::Stdout,
                data: Bytes::from_static(b"first\n")
            },
            "agent: {agent}"
        );
        sandbox.sh(&format!("touch {gate}")).await;
        let (stdout, stderr, exit) = drain(events).await;
        assert!(stdout.is_empty(), "agent: {agent}: {stdout:?}");
        assert_eq!(stderr, b"second\n", "agent: {agent}");
        assert!(
            matches!(exit, ExecEvent::Exit { exit_code: 4, timed_out: false, .. }),
            "agent: {agent}: {exit:?}"
        );

        // Bytes that are not UTF-8 arrive as they are, and a stream is not capped.
        let raw = shell("printf '\\377\\376'; head -c 3000000 /dev/zero");
        let (stdout, _, _) = drain(runtime.exec_stream(&sandbox.id, &raw).await.unwrap()).await;
        assert_eq!(stdout.len(), 3_000_002, "agent: {agent}");
        assert_eq!(&stdout[..3], b"\xff\xfe\0", "agent: {agent}");

        let timed = ExecRequest {
            timeout: Some(Duration::from_secs(1)),
            ..shell("echo started; sleep 30")
        };
        let (stdout, _, exit) = drain(runtime.exec_stream(&sandbox.id, &timed).await.unwrap()).await;
        assert_eq!(stdout, b"started\n");
        assert!(
            matches!(exit, ExecEvent::Exit { exit_code: 137, timed_out: true, .. }),
            "agent: {agent}: {exit:?}"
        );
        vec![sandbox.id.clone()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_read_slowly_holds_back_only_its_own_command_and_loses_nothing() {
    on_both_paths(|runtime, agent| async move {
        let sandbox = Sandbox::started(&runtime, template()).await;
        let big = shell("head -c 100000000 /dev/zero; echo end >&2");
        let mut events = runtime.exec_stream(&sandbox.id, &big).await.unwrap();
        let first = next_event(&mut events).await;
        // The peak so far (the other path's 100 MB) must not hide this one's.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = peak_rss();
        // Not read for now: far more than every buffer on the way is waiting. Another
        // command on the same sandbox (the same agent connection) still runs at once, and
        // what waits is held back in the sandbox (the command blocks), not in this process.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let other = tokio::time::timeout(Duration::from_secs(20), sandbox.sh("echo other"))
            .await
            .expect("another command waited for the slow stream");
        assert_eq!(other.stdout, "other\n", "agent: {agent}");
        let growth = peak_rss().saturating_sub(before);
        assert!(
            growth < 16 * 1024 * 1024,
            "agent: {agent}: {growth} bytes held for a stream nobody reads"
        );
        let ExecEvent::Output { data, .. } = first else {
            panic!("agent: {agent}: {first:?}")
        };
        let (stdout, stderr, exit) = drain(events).await;
        assert_eq!(data.len() + stdout.len(), 100_000_000, "agent: {agent}");
        assert_eq!(stderr, b"end\n", "agent: {agent}");
        assert!(
            matches!(exit, ExecEvent::Exit { exit_code: 0, .. }),
            "{exit:?}"
        );
        vec![sandbox.id.clone()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_a_streamed_exec_kills_the_command_and_what_it_started() {
    on_both_paths(|runtime, agent| async move {
        let sandbox = Sandbox::started(&runtime, template()).await;
        let request = shell("sleep 301 & echo started; sleep 302");
        let mut events = runtime.exec_stream(&sandbox.id, &request).await.unwrap();
        assert!(
            matches!(next_event(&mut events).await, ExecEvent::Output { .. }),
            "agent: {agent}"
        );
        drop(events);
        let ps = "ps -o args | grep -c 'sleep 30[12]' || true";
        let gone = eventually(Duration::from_secs(20), async || {
            sandbox.sh(ps).await.stdout.trim() == "0"
        })
        .await;
        assert!(
            gone,
            "agent: {agent}: left running: {:?}",
            sandbox.sh(ps).await
        );
        vec![sandbox.id.clone()]
    })
    .await;
}

/// The Debian test image (`cargo xtask` builds it with debootstrap): glibc, bash, and a
/// non-root user `vscode` that owns `/workspace`.
const DEBIAN: &str = "monza-test/debian:bookworm";

#[tokio::test(flavor = "multi_thread")]
async fn on_a_debian_image_commands_run_as_its_non_root_user_through_either_path() {
    let present =
        on_fresh_runtime(
            |docker| async move { docker.images().get(DEBIAN).inspect().await.map(drop) },
        );
    if require(&format!("the test image {DEBIAN}"), present).is_none() {
        return;
    }
    on_both_paths(|runtime, agent| async move {
        let template = Template {
            image: ImageSource::Image(DEBIAN.into()),
            remote_user: Some("vscode".into()),
            config: json!({ "image": DEBIAN, "remoteUser": "vscode" }),
            ..template()
        };
        let sandbox = Sandbox::started(&runtime, template).await;
        let as_vscode = |line: &str| ExecRequest {
            user: Some("vscode".into()),
            ..shell(line)
        };
        let out = runtime
            .exec(
                &sandbox.id,
                &as_vscode("id -un; bash -c 'echo ${BASH_VERSINFO[0]}'; ls /lib/x86_64-linux-gnu/libc.so.6"),
            )
            .await
            .unwrap();
        assert_eq!(
            out.stdout, "vscode\n5\n/lib/x86_64-linux-gnu/libc.so.6\n",
            "agent: {agent}: {out:?}"
        );
        let write = ExecRequest {
            stdin: Some(b"hello\n".to_vec()),
            ..as_vscode("cat > /workspace/f && stat -c %U /workspace/f && cat /workspace/f")
        };
        let out = runtime.exec(&sandbox.id, &write).await.unwrap();
        assert_eq!(out.stdout, "vscode\nhello\n", "agent: {agent}: {out:?}");
        let events = runtime
            .exec_stream(&sandbox.id, &as_vscode("printf 'a\\377'; echo b >&2"))
            .await
            .unwrap();
        let (stdout, stderr, exit) = drain(events).await;
        assert_eq!((stdout.as_slice(), stderr.as_slice()), (&b"a\xff"[..], &b"b\n"[..]));
        assert!(matches!(exit, ExecEvent::Exit { exit_code: 0, .. }), "{exit:?}");
        // A timeout kills what the command started too (minbase has no ps: /proc).
        let timed = ExecRequest {
            timeout: Some(Duration::from_secs(1)),
            ..as_vscode("sleep 30 & sleep 31")
        };
        let out = runtime.exec(&sandbox.id, &timed).await.unwrap();
        assert!(out.timed_out, "agent: {agent}: {out:?}");
        let left = "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done | grep -c '^sleep 3[01]' || true";
        let gone = eventually(Duration::from_secs(10), async || {
            runtime.exec(&sandbox.id, &as_vscode(left)).await.unwrap().stdout.trim() == "0"
        })
        .await;
        assert!(gone, "agent: {agent}: the timed-out command's children are left");
        vec![sandbox.id.clone()]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn files_go_in_and_out_byte_for_byte() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let sandbox = Sandbox::started(&runtime, template()).await;
    let data = random_bytes(5 * 1024 * 1024 + 123, 42);
    let chunks: Vec<Result<Bytes, Error>> = data
        .chunks(64 * 1024)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let file = UploadFile {
        options: WriteOptions {
            create_parents: true,
            ..WriteOptions::default()
        },
        name: "random.bin".into(),
        size: data.len() as u64,
        content: futures::stream::iter(chunks).boxed(),
    };
    runtime
        .upload(&sandbox.id, "/workspace/new/deeper", file)
        .await
        .unwrap();

    let stat = runtime
        .stat(&sandbox.id, "/workspace/new/deeper/random.bin")
        .await
        .unwrap();
    assert_eq!(
        (stat.name.as_str(), stat.size, stat.is_dir()),
        ("random.bin", data.len() as u64, false)
    );
    let dir = runtime.stat(&sandbox.id, "/workspace/new").await.unwrap();
    assert!(dir.is_dir());
    let inside = sandbox
        .sh("md5sum /workspace/new/deeper/random.bin | cut -d' ' -f1")
        .await;
    assert_eq!(inside.stdout.trim().len(), 32);

    let download = runtime
        .download(&sandbox.id, "/workspace/new/deeper/random.bin")
        .await
        .unwrap();
    assert_eq!(download.stat.size, data.len() as u64);
    let mut back = Vec::new();
    let mut content = download.content;
    while let Some(chunk) = content.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert!(
        back == data,
        "downloaded bytes differ ({} vs {} bytes)",
        back.len(),
        data.len()
    );

    // A file written in the sandbox comes out too, through a symlink.
    sandbox.sh("printf made-inside > /workspace/inside.txt; ln -s /workspace/inside.txt /workspace/link").await;
    let link = runtime
        .download(&sandbox.id, "/workspace/link")
        .await
        .unwrap();
    let text: Vec<Bytes> = link.content.map(|c| c.unwrap()).collect().await;
    assert_eq!(text.concat(), b"made-inside");

    // A missing file is told apart from a missing sandbox.
    let missing = Err::<(), _>(FileProblem::NotFound);
    assert_eq!(
        runtime
            .stat(&sandbox.id, "/nope")
            .await
            .map(drop)
            .map_err(problem),
        missing
    );
    assert_eq!(
        runtime
            .download(&sandbox.id, "/nope")
            .await
            .map(drop)
            .map_err(problem),
        missing
    );
    assert!(
        matches!(runtime.download(&sandbox.id, "/workspace").await, Err(Error::File { problem: FileProblem::IsDirectory, message }) if message.contains("is a directory"))
    );

    let short = UploadFile {
        options: WriteOptions {
            create_parents: true,
            ..WriteOptions::default()
        },
        name: "short".into(),
        size: 10,
        content: futures::stream::iter([Ok(Bytes::from_static(b"abc"))]).boxed(),
    };
    assert!(
        matches!(runtime.upload(&sandbox.id, "/workspace", short).await, Err(Error::InvalidInput(m)) if m.contains("announced"))
    );
    let gone = UploadFile {
        options: WriteOptions {
            create_parents: true,
            ..WriteOptions::default()
        },
        name: "x".into(),
        size: 0,
        content: futures::stream::empty().boxed(),
    };
    assert!(matches!(
        runtime
            .upload("monza-no-such-container", "/tmp", gone)
            .await,
        Err(Error::NotFound(_))
    ));
}

/// The file problem of a file operation's error (panics on any other error).
fn problem(error: Error) -> FileProblem {
    match error {
        Error::File { problem, .. } => problem,
        other => panic!("not a file problem: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn managed_containers_are_listed_and_removal_is_idempotent() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let spec = spec(template());
    let sandbox = Sandbox::create(&runtime, &spec).await;
    let listed = runtime.list_managed().await.unwrap();
    let mine = listed.iter().find(|c| c.id == sandbox.id).expect("listed");
    assert_eq!(mine.sandbox_id, Some(spec.sandbox_id));
    assert!(!mine.running);
    runtime.start(&sandbox.id).await.unwrap();
    runtime
        .start(&sandbox.id)
        .await
        .expect("starting twice is fine");
    let listed = runtime.list_managed().await.unwrap();
    assert!(listed.iter().any(|c| c.id == sandbox.id && c.running));

    runtime.remove(&sandbox.id).await.unwrap();
    runtime
        .remove(&sandbox.id)
        .await
        .expect("removing twice is fine");
    let listed = runtime.list_managed().await.unwrap();
    assert!(listed.iter().all(|c| c.id != sandbox.id));
    assert!(matches!(
        runtime.start(&sandbox.id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        runtime.exec(&sandbox.id, &shell("true")).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_image_fails_fast_naming_it() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let name = format!(
        "monza-test/no-such-image-{}:latest",
        SandboxId::new_random()
    );
    let started = Instant::now();
    let result = runtime
        .create(&spec(Template {
            image: ImageSource::Image(name.clone()),
            ..template()
        }))
        .await;
    let err = result.expect_err("an image that is nowhere cannot be used");
    eprintln!("unknown image: {err}");
    assert!(err.to_string().contains(&name), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_mount_is_refused_even_when_unsafe_options_are_allowed() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let mut t = template();
    t.run_options.privileged = true;
    t.mounts = vec![Mount {
        kind: "bind".into(),
        source: Some("/var/run".into()),
        target: "/host-run".into(),
        read_only: true,
    }];
    let result = runtime.create(&spec(t)).await;
    assert!(
        matches!(result, Err(Error::InvalidInput(ref m)) if m.contains("Docker socket")),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_engine_is_unavailable_with_its_address_quickly() {
    for host in ["unix:///nonexistent.sock", "tcp://127.0.0.1:1"] {
        let runtime = DockerRuntime::new(DockerSettings {
            host: host.into(),
            request_timeout: Duration::from_secs(5),
            ..DockerSettings::default()
        })
        .unwrap();
        let started = Instant::now();
        for result in [
            runtime.ping().await.map(drop),
            runtime.create(&spec(template())).await.map(drop),
            runtime.list_managed().await.map(drop),
        ] {
            match result {
                Err(Error::Unavailable {
                    dependency,
                    message,
                }) => {
                    assert_eq!(dependency, "docker");
                    assert!(message.contains(host), "{message}");
                }
                other => panic!("{host}: expected unavailable, got {other:?}"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{host}: took {:?}",
            started.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_built_template_is_built_once_and_reused() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let context = tempfile::tempdir().unwrap();
    let marker = SandboxId::new_random().to_string();
    std::fs::write(
        context.path().join("Dockerfile"),
        format!("FROM {IMAGE}\nARG FLAVOUR=plain\nCOPY note.txt /note.txt\nRUN echo built-$FLAVOUR > /built\n"),
    )
    .unwrap();
    std::fs::File::create(context.path().join("note.txt"))
        .unwrap()
        .write_all(marker.as_bytes())
        .unwrap();
    let build = BuildSpec {
        context: context.path().to_path_buf(),
        dockerfile: "Dockerfile".into(),
        args: BTreeMap::from([("FLAVOUR".into(), "spicy".into())]),
        target: None,
    };
    let t = Template {
        image: ImageSource::Build(build.clone()),
        ..template()
    };

    let first_spec = spec(t.clone());
    let first = Sandbox::create(&runtime, &first_spec).await;
    let image = runtime.create(&spec(t.clone())).await.map(|c| {
        let _second = Sandbox {
            runtime: runtime.clone(),
            id: c.id,
        };
        c.image
    });
    let image = image.unwrap();
    assert!(
        image.starts_with("monza-build/docker-adapter-test:"),
        "{image}"
    );
    runtime.start(&first.id).await.unwrap();
    let out = first.sh("cat /built /note.txt").await;
    assert_eq!(out.stdout, format!("built-spicy\n{marker}"));

    let tag_time = |image: String| {
        on_fresh_runtime(move |docker| async move {
            docker
                .images()
                .get(image)
                .inspect()
                .await
                .unwrap()
                .metadata
                .and_then(|m| m.last_tag_time)
        })
    };
    let tagged = tag_time(image.clone());
    assert!(tagged.is_some());
    let third = Sandbox::create(&runtime, &spec(t.clone())).await;
    assert_eq!(
        tag_time(image.clone()),
        tagged,
        "the second sandbox must not rebuild"
    );
    drop(third);

    // A changed context is a different image.
    std::fs::write(context.path().join("note.txt"), "changed").unwrap();
    let changed = Sandbox::create(&runtime, &spec(t)).await;
    let changed_image = changed.inspect_container().config.unwrap().image.unwrap();
    assert_ne!(changed_image, image);
    drop(changed);
    drop(first);

    for tag in [image, changed_image] {
        on_fresh_runtime(move |docker| async move {
            let _ = docker
                .images()
                .get(tag)
                .remove(
                    &docker_api::opts::ImageRemoveOpts::builder()
                        .force(true)
                        .build(),
                )
                .await;
        });
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn files_on_a_tmpfs_mount_are_refused_since_the_sandbox_would_not_see_them() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let mut t = template();
    t.mounts = vec![Mount {
        kind: "tmpfs".into(),
        source: None,
        target: "/scratch".into(),
        read_only: false,
    }];
    let sandbox = Sandbox::started(&runtime, t).await;
    let file = |name: &str| UploadFile {
        options: WriteOptions {
            create_parents: true,
            ..WriteOptions::default()
        },
        name: name.into(),
        size: 2,
        content: futures::stream::iter([Ok(Bytes::from_static(b"hi"))]).boxed(),
    };
    for dir in ["/scratch", "/scratch/deeper"] {
        let result = runtime.upload(&sandbox.id, dir, file("x.txt")).await;
        assert!(
            matches!(result, Err(Error::InvalidInput(ref m)) if m.contains("tmpfs")),
            "{dir}: {result:?}"
        );
    }
    let out = sandbox
        .sh("echo made > /scratch/y.txt && ls -A /scratch")
        .await;
    assert_eq!(
        out.stdout, "y.txt\n",
        "the refused upload left nothing: {out:?}"
    );
    let result = runtime.download(&sandbox.id, "/scratch/y.txt").await;
    assert!(
        matches!(result, Err(Error::InvalidInput(ref m)) if m.contains("tmpfs")),
        "{:?}",
        result.err()
    );
    // Beside the mount, and in a directory whose name only starts like it, files still move.
    runtime
        .upload(&sandbox.id, "/scratch-not", file("z.txt"))
        .await
        .unwrap();
    let out = sandbox.sh("cat /scratch-not/z.txt").await;
    assert_eq!(out.stdout, "hi");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_whose_registry_does_not_answer_is_unavailable_and_a_failing_step_is_invalid() {
    let Some(runtime) = runtime().await else {
        return;
    };
    let build = |dockerfile: &str| {
        let context = tempfile::tempdir().unwrap();
        std::fs::write(context.path().join("Dockerfile"), dockerfile).unwrap();
        let spec = BuildSpec {
            context: context.path().to_path_buf(),
            dockerfile: "Dockerfile".into(),
            args: BTreeMap::new(),
            target: None,
        };
        let built = Template {
            image: ImageSource::Build(spec),
            ..template()
        };
        (context, built)
    };
    // Port 1 on loopback: nothing listens, so the base image's registry refuses at once.
    let (_unreachable, t) = build("FROM 127.0.0.1:1/nothing:latest\nRUN true\n");
    match runtime.create(&spec(t)).await {
        Err(Error::Unavailable {
            dependency,
            message,
        }) => {
            assert_eq!(dependency, "image registry", "{message}");
            assert!(message.contains("127.0.0.1:1"), "{message}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    let (_failing, t) = build(&format!("FROM {IMAGE}\nRUN exit 3\n"));
    match runtime.create(&spec(t)).await {
        Err(Error::InvalidInput(message)) => {
            assert!(message.contains("non-zero code: 3"), "{message}");
        }
        other => panic!("expected invalid input, got {other:?}"),
    }
}

/// As root through Docker exec (a user other than the agent's, so never the agent).
fn as_root(line: &str) -> ExecRequest {
    ExecRequest {
        user: Some("0".into()),
        ..shell(line)
    }
}

/// Kills the sandbox's agent process(es) with SIGKILL, through Docker exec.
const KILL_AGENT: &str = r#"for p in /proc/[0-9]*; do
  [ "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" = "/.monza-agent " ] && kill -9 "${p#/proc/}" && echo killed
done; true"#;

/// Counts the sandbox's agent processes, through Docker exec.
const COUNT_AGENTS: &str = r#"n=0; for p in /proc/[0-9]*; do
  [ "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" = "/.monza-agent " ] && n=$((n+1))
done; echo $n"#;

/// Polls `f` every 100 ms until it holds, for at most `within`.
async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_is_replaced_by_docker_exec_then_restarted_and_removal_cleans_up() {
    let Some(runtime) = agent_runtime().await else {
        return;
    };
    let spec = spec(template());
    let dir = runtime.dir.path().join(spec.sandbox_id.to_string());
    let sandbox = Sandbox::create(&runtime, &spec).await;
    runtime.start(&sandbox.id).await.unwrap();
    assert!(dir.join("agent.sock").exists());
    assert!(
        eventually(Duration::from_secs(10), async || runtime
            .agent_connected(&sandbox.id))
        .await,
        "the agent did not connect"
    );

    assert_eq!(sandbox.sh("echo one").await.stdout, "one\n");
    assert_eq!(runtime.agent_execs(&sandbox.id), 1);

    let killed = runtime
        .exec(&sandbox.id, &as_root(KILL_AGENT))
        .await
        .unwrap();
    assert_eq!(killed.stdout, "killed\n", "{killed:?}");
    assert!(
        eventually(Duration::from_secs(2), async || !runtime
            .agent_connected(&sandbox.id))
        .await,
        "the host did not see the agent die"
    );
    // Answered through Docker exec, at once.
    let out = sandbox.sh("echo two").await;
    assert_eq!((out.exit_code, out.stdout.as_str()), (0, "two\n"));
    assert_eq!(runtime.agent_execs(&sandbox.id), 1);

    // Later commands start it again, and it serves them.
    assert!(
        eventually(Duration::from_secs(10), async || {
            sandbox.sh("true").await;
            runtime.agent_execs(&sandbox.id) > 1
        })
        .await,
        "the agent did not come back"
    );
    let out = sandbox.sh("echo three").await;
    assert_eq!(out.stdout, "three\n");
    let agents = runtime
        .exec(&sandbox.id, &as_root(COUNT_AGENTS))
        .await
        .unwrap();
    assert_eq!(agents.stdout, "1\n", "one agent, restarted once");

    runtime.remove(&sandbox.id).await.unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    assert!(!runtime.agent_connected(&sandbox.id));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_socket_directory_is_read_only_inside_and_the_host_only_accepts() {
    let Some(runtime) = agent_runtime().await else {
        return;
    };
    let spec = spec(template());
    let dir = runtime.dir.path().join(spec.sandbox_id.to_string());
    let sandbox = Sandbox::create(&runtime, &spec).await;
    runtime.start(&sandbox.id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || runtime
            .agent_connected(&sandbox.id))
        .await,
        "the agent did not connect"
    );

    // Even root in the sandbox cannot plant anything there.
    let plant = runtime
        .exec(
            &sandbox.id,
            &as_root(
                "ln -s /var/run/docker.sock /.monza/agent.sock.new; \
                 touch /.monza/x; rm /.monza/agent.sock; mv /.monza/agent.sock /.monza/y; \
                 ls -A /.monza",
            ),
        )
        .await
        .unwrap();
    assert_eq!(plant.stdout, "agent.sock\n", "{plant:?}");
    assert_eq!(
        plant.stderr.matches("Read-only file system").count(),
        4,
        "{plant:?}"
    );
    let meta = std::fs::metadata(&dir).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(meta.permissions().mode() & 0o777, 0o711);
    assert_eq!(meta.uid(), nix_uid(), "owned by monza's user");

    // Plant symlinks on the host side (where only monza's user could): one beside the
    // socket, to a listener of ours. The host never connects anywhere, so however the
    // agent comes and goes, nothing reaches the trap.
    let trap_dir = tempfile::tempdir().unwrap();
    let trap = std::os::unix::net::UnixListener::bind(trap_dir.path().join("trap.sock")).unwrap();
    trap.set_nonblocking(true).unwrap();
    std::os::unix::fs::symlink(
        trap_dir.path().join("trap.sock"),
        dir.join("agent.sock.new"),
    )
    .unwrap();
    std::os::unix::fs::symlink(trap_dir.path().join("trap.sock"), dir.join("agent")).unwrap();
    runtime
        .exec(&sandbox.id, &as_root(KILL_AGENT))
        .await
        .unwrap();
    let served = runtime.agent_execs(&sandbox.id);
    assert!(
        eventually(Duration::from_secs(10), async || {
            // One sent before the host saw the agent die fails (it may have run).
            let _ = runtime.exec(&sandbox.id, &shell("true")).await;
            runtime.agent_execs(&sandbox.id) > served
        })
        .await,
        "the agent did not come back"
    );
    assert!(
        matches!(trap.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected to the planted symlink's target"
    );
}

/// This process's uid, from `/proc/self/status` (the workspace forbids `unsafe`).
fn nix_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_runtime_adopts_the_agents_of_containers_it_did_not_create() {
    let Some(first) = agent_runtime().await else {
        return;
    };
    let AgentRuntime {
        runtime: first,
        dir,
    } = first;
    let settings = first.settings().clone();
    let spec = spec(template());
    let sandbox_dir = dir.path().join(spec.sandbox_id.to_string());
    let mut sandbox = Sandbox::create(&first, &spec).await;
    first.start(&sandbox.id).await.unwrap();
    assert_eq!(sandbox.sh("echo one").await.stdout, "one\n");
    assert_eq!(first.agent_execs(&sandbox.id), 1);

    // monza restarts: the first runtime (its listeners and connections) goes away, the
    // directory and the agent in the container stay.
    let second = DockerRuntime::new(settings.clone()).unwrap();
    sandbox.runtime = second.clone();
    drop(first);
    assert!(sandbox_dir.join("agent.sock").exists());
    let out = sandbox.sh("echo two").await;
    assert_eq!(
        out.stdout, "two\n",
        "answered through Docker exec meanwhile"
    );
    assert!(
        eventually(Duration::from_secs(10), async || {
            sandbox.sh("true").await;
            second.agent_execs(&sandbox.id) > 0
        })
        .await,
        "the running agent did not reconnect to the adopted directory"
    );
    // The agent the first runtime started holds a token the second never knew: refused at
    // its next reconnect (within its 2 s backoff), it exits, leaving the one started anew.
    assert!(
        eventually(Duration::from_secs(10), async || second
            .exec(&sandbox.id, &as_root(COUNT_AGENTS))
            .await
            .unwrap()
            .stdout
            == "1\n")
        .await,
        "the adopted agent was doubled"
    );

    // The host reboots: the container is stopped and /run is empty. A new runtime's start
    // makes the mount sources again, so the container starts, and so does its agent.
    let id = sandbox.id.clone();
    on_fresh_runtime(move |docker| async move {
        docker
            .containers()
            .get(id)
            .stop(&Default::default())
            .await
            .unwrap();
    });
    drop(second);
    std::fs::remove_dir_all(dir.path()).unwrap();
    let third = DockerRuntime::new(settings).unwrap();
    sandbox.runtime = third.clone();
    third.start(&sandbox.id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            sandbox.sh("true").await;
            third.agent_execs(&sandbox.id) > 0
        })
        .await,
        "the agent did not start with the container"
    );
    third.remove(&sandbox.id).await.unwrap();
    assert!(!sandbox_dir.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_execs_through_one_agent_each_get_their_own_output() {
    let Some(runtime) = agent_runtime().await else {
        return;
    };
    let sandbox = Sandbox::started(&runtime, template()).await;
    assert!(
        eventually(Duration::from_secs(10), async || runtime
            .agent_connected(&sandbox.id))
        .await,
        "the agent did not connect"
    );
    let runs = (0..20).map(|i| {
        let runtime = runtime.runtime.clone();
        let id = sandbox.id.clone();
        async move {
            let line = format!("echo out{i}; sleep 0.2; echo err{i} >&2; exit {i}");
            (i, runtime.exec(&id, &shell(&line)).await.unwrap())
        }
    });
    for (i, out) in futures::future::join_all(runs).await {
        assert_eq!(out.exit_code, i);
        assert_eq!(out.stdout, format!("out{i}\n"));
        assert_eq!(out.stderr, format!("err{i}\n"));
    }
    assert_eq!(runtime.agent_execs(&sandbox.id), 20);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_dying_mid_command_fails_it_rather_than_running_it_twice() {
    let Some(runtime) = agent_runtime().await else {
        return;
    };
    let sandbox = Sandbox::started(&runtime, template()).await;
    assert!(
        eventually(Duration::from_secs(10), async || runtime
            .agent_connected(&sandbox.id))
        .await,
        "the agent did not connect"
    );
    let running = {
        let runtime = runtime.runtime.clone();
        let id = sandbox.id.clone();
        tokio::spawn(async move {
            runtime
                .exec(&id, &shell("echo ran >> /tmp/runs; sleep 3"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    runtime
        .exec(&sandbox.id, &as_root(KILL_AGENT))
        .await
        .unwrap();
    let result = running.await.unwrap();
    assert!(
        matches!(result, Err(Error::Unavailable { .. })),
        "{result:?}"
    );
    let runs = runtime
        .exec(&sandbox.id, &as_root("cat /tmp/runs"))
        .await
        .unwrap();
    assert_eq!(runs.stdout, "ran\n", "the command ran once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_live_runtime_on_the_same_agent_directory_leaves_the_agent_to_the_first() {
    let Some(first) = agent_runtime().await else {
        return;
    };
    let sandbox = Sandbox::started(&first, template()).await;
    assert!(
        eventually(Duration::from_secs(10), async || first
            .agent_connected(&sandbox.id))
        .await,
        "the agent did not connect"
    );
    // A replica on the same host and directory: its commands go through Docker exec, and
    // its adoption (tried at its first exec) leaves the first one's socket alone.
    let second = DockerRuntime::new(first.settings().clone()).unwrap();
    for _ in 0..3 {
        let out = second.exec(&sandbox.id, &shell("echo hi")).await.unwrap();
        assert_eq!(out.stdout, "hi\n");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(second.agent_execs(&sandbox.id), 0);
    assert!(!second.agent_connected(&sandbox.id));
    let served = first.agent_execs(&sandbox.id);
    sandbox.sh("true").await;
    assert_eq!(first.agent_execs(&sandbox.id), served + 1);
    // Its agent survives a reconnect to the first runtime's socket, still there.
    first.exec(&sandbox.id, &as_root(KILL_AGENT)).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || {
            // One sent before the host saw the agent die fails (it may have run).
            let _ = first.exec(&sandbox.id, &shell("true")).await;
            first.agent_execs(&sandbox.id) > served + 1
        })
        .await,
        "the first runtime lost its agent"
    );
}

/// Connects to the sandbox's socket from the host and says hello with `token`; answers what
/// the host sent back first (`None`: it closed the connection without a word).
fn impostor_hello(socket: &std::path::Path, token: Option<String>) -> Option<Message> {
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write_message(
        &mut stream,
        &Message::Hello(Hello {
            protocol: PROTOCOL_VERSION,
            pid: 1,
            uid: 0,
            gid: 0,
            agent_version: "impostor".into(),
            token,
        }),
    )
    .unwrap();
    read_message(&mut std::io::BufReader::new(stream)).unwrap_or(None)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_without_the_start_token_is_refused_and_never_sees_an_exec() {
    let Some(runtime) = agent_runtime().await else {
        return;
    };
    let spec = spec(template());
    let socket = runtime
        .dir
        .path()
        .join(spec.sandbox_id.to_string())
        .join("agent.sock");
    let sandbox = Sandbox::create(&runtime, &spec).await;
    runtime.start(&sandbox.id).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), async || runtime
            .agent_connected(&sandbox.id))
        .await,
        "the agent did not connect"
    );
    // The token is in neither the container's config nor any command's environment.
    let inspect = sandbox.inspect_container();
    let config = serde_json::to_string(&inspect.config).unwrap();
    assert!(!config.contains("MONZA_AGENT_TOKEN"), "{config}");
    let env = sandbox.sh("env; tr '\\0' '\\n' < /proc/1/environ").await;
    assert!(!env.stdout.contains("MONZA_AGENT_TOKEN"), "{env:?}");
    assert!(runtime.agent_execs(&sandbox.id) >= 1);

    runtime
        .exec(&sandbox.id, &as_root(KILL_AGENT))
        .await
        .unwrap();
    assert!(
        eventually(Duration::from_secs(2), async || !runtime
            .agent_connected(&sandbox.id))
        .await,
        "the host did not see the agent die"
    );

    // While no agent is connected: a silent peer holds a connection open, and peers from
    // the host with no token or a wrong one are refused with an error.
    let mut silent = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    for token in [None, Some("0".repeat(64)), Some(String::new())] {
        let answer = impostor_hello(&socket, token.clone());
        assert!(
            matches!(answer, Some(Message::Error { id: 0, .. })),
            "{token:?} got {answer:?}"
        );
        assert!(!runtime.agent_connected(&sandbox.id));
    }
    // Inside the sandbox, as another user, the agent binary itself without the token: the
    // host refuses it and it exits (3) rather than retrying.
    let other = runtime
        .exec(
            &sandbox.id,
            &ExecRequest {
                user: Some("4242:4242".into()),
                ..shell("MONZA_AGENT_SOCKET=/.monza/agent.sock timeout 10 /.monza-agent 2>&1; echo status=$?")
            },
        )
        .await
        .unwrap();
    assert!(other.stdout.contains("status=3"), "{other:?}");
    assert!(other.stdout.contains("refused"), "{other:?}");

    // The real agent comes back (the silent peer notwithstanding) and serves, and an exec's
    // environment reaches it alone.
    let served = runtime.agent_execs(&sandbox.id);
    let secret = "monza-secret-7f3a";
    let with_secret = ExecRequest {
        env: BTreeMap::from([("API_KEY".into(), secret.into())]),
        ..shell("echo $API_KEY")
    };
    assert!(
        eventually(Duration::from_secs(10), async || {
            let out = runtime.exec(&sandbox.id, &with_secret).await.unwrap();
            assert_eq!(out.stdout, format!("{secret}\n"));
            runtime.agent_execs(&sandbox.id) > served
        })
        .await,
        "the agent did not come back"
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut heard = Vec::new();
    let _ = silent.read_to_end(&mut heard);
    assert!(
        !String::from_utf8_lossy(&heard).contains(secret),
        "the silent peer saw an exec"
    );
    assert!(heard.is_empty(), "the silent peer was sent {heard:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_exec_losing_to_a_removal_answers_what_docker_exec_answers_not_unavailable() {
    let Some(runtime) = agent_runtime().await else {
        return;
    };
    let sandbox = Sandbox::started(&runtime, template()).await;
    assert!(
        eventually(Duration::from_secs(10), async || runtime
            .agent_connected(&sandbox.id))
        .await,
        "the agent did not connect"
    );
    let running = {
        let runtime = runtime.runtime.clone();
        let id = sandbox.id.clone();
        tokio::spawn(async move { runtime.exec(&id, &shell("sleep 20")).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    runtime.remove(&sandbox.id).await.unwrap();
    let result = running.await.unwrap();
    assert!(
        matches!(result, Err(Error::NotFound(_) | Error::Conflict(_))),
        "{result:?}"
    );
    // What Docker exec answers for the same vanished container.
    let plain = self::runtime().await.unwrap();
    let docker = plain.exec(&sandbox.id, &shell("true")).await;
    assert!(
        matches!(docker, Err(Error::NotFound(_) | Error::Conflict(_))),
        "{docker:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_create_leaves_no_agent_directory_or_lock_and_a_broken_agent_dir_does_not_fail_it()
{
    let Some(runtime) = agent_runtime().await else {
        return;
    };
    let mut t = template();
    t.mounts = vec![Mount {
        kind: "bind".into(),
        source: Some("/var/run".into()),
        target: "/host-run".into(),
        read_only: true,
    }];
    let refused = spec(t);
    let id = refused.sandbox_id.to_string();
    let result = runtime.create(&refused).await;
    assert!(matches!(result, Err(Error::InvalidInput(_))), "{result:?}");
    assert!(!runtime.dir.path().join(&id).exists(), "directory left");
    assert!(
        !runtime
            .dir
            .path()
            .join("owners")
            .join(format!("{id}.lock"))
            .exists(),
        "lock file left"
    );

    // A sandbox directory that cannot be made (a file in its place): no agent, still created.
    let spec = spec(template());
    std::fs::write(
        runtime.dir.path().join(spec.sandbox_id.to_string()),
        b"in the way",
    )
    .unwrap();
    let sandbox = Sandbox::create(&runtime, &spec).await;
    runtime.start(&sandbox.id).await.unwrap();
    assert_eq!(sandbox.sh("echo fine").await.stdout, "fine\n");
    assert_eq!(runtime.agent_execs(&sandbox.id), 0, "Docker exec ran it");
    assert!(
        !runtime
            .dir
            .path()
            .join("owners")
            .join(format!("{}.lock", spec.sandbox_id))
            .exists(),
        "lock file left by the failed prepare"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_a_container_of_an_earlier_runtime_removes_its_agent_directory_and_lock() {
    let Some(first) = agent_runtime().await else {
        return;
    };
    let AgentRuntime {
        runtime: first,
        dir,
    } = first;
    let spec = spec(template());
    let sandbox_dir = dir.path().join(spec.sandbox_id.to_string());
    let lock = dir
        .path()
        .join("owners")
        .join(format!("{}.lock", spec.sandbox_id));
    let mut sandbox = Sandbox::create(&first, &spec).await;
    let second = DockerRuntime::new(first.settings().clone()).unwrap();
    sandbox.runtime = second.clone();
    drop(first);
    assert!(sandbox_dir.exists() && lock.exists());
    // No exec, no start: the second runtime never adopted it.
    second.remove(&sandbox.id).await.unwrap();
    assert!(!sandbox_dir.exists(), "directory left");
    assert!(!lock.exists(), "lock file left");
}

fn background(line: &str, user: Option<&str>) -> ProcessRequest {
    ProcessRequest {
        command: Command::Shell(line.into()),
        workdir: None,
        env: BTreeMap::new(),
        user: user.map(str::to_owned),
        timeout: None,
        stdin: false,
        keep_alive: false,
        output_limit: 1024 * 1024,
        pty: None,
    }
}

/// Everything a read of a process's output gives, to its last event: (stdout, stderr,
/// the offset of each chunk's first byte as (stream, offset, len), the last event).
async fn read_output(
    runtime: &DockerRuntime,
    container_id: &str,
    pid: u32,
    offsets: (u64, u64),
    follow: bool,
) -> (
    Vec<u8>,
    Vec<u8>,
    Vec<(OutputStream, u64, usize)>,
    ProcessEvent,
) {
    let mut events = runtime
        .process_output(container_id, pid, offsets, follow)
        .await
        .expect("output");
    let (mut out, mut err, mut chunks) = (Vec::new(), Vec::new(), Vec::new());
    loop {
        let event = tokio::time::timeout(Duration::from_secs(30), events.next())
            .await
            .expect("an event within 30 s")
            .expect("the output ends with its last event")
            .expect("no error");
        match event {
            ProcessEvent::Output {
                stream,
                offset,
                data,
            } => {
                chunks.push((stream, offset, data.len()));
                match stream {
                    OutputStream::Stdout => out.extend_from_slice(&data),
                    OutputStream::Stderr => err.extend_from_slice(&data),
                }
            }
            last => return (out, err, chunks, last),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn background_processes_run_through_the_agent_on_busybox_and_on_debian() {
    let Some(agents) = agent_runtime().await else {
        return;
    };
    let debian =
        on_fresh_runtime(
            |docker| async move { docker.images().get(DEBIAN).inspect().await.map(drop) },
        );
    require(&format!("the test image {DEBIAN}"), debian).expect("the Debian test image");
    let images = [(IMAGE, None), (DEBIAN, Some("vscode"))];
    for (image, user) in images {
        let template = Template {
            image: ImageSource::Image(image.into()),
            remote_user: user.map(str::to_owned),
            config: json!({ "image": image, "remoteUser": user }),
            ..template()
        };
        let sandbox = Sandbox::started(&agents, template).await;
        let id = sandbox.id.as_str();
        let mut request = background(
            "echo out; echo err >&2; read line; echo \"got $line\"; id -un; exit 3",
            user,
        );
        request.stdin = true;
        let started = agents.start_process(id, &request).await.expect("start");
        assert!(started.pid > 0 && started.stdin_open && started.exit.is_none());
        let listed = agents.processes(id).await.unwrap();
        assert!(listed.iter().any(|p| p.pid == started.pid), "{listed:?}");

        agents
            .process_stdin(id, started.pid, Bytes::from_static(b"hi\n"), true)
            .await
            .expect("stdin");
        let (out, err, _, last) = read_output(&agents, id, started.pid, (0, 0), true).await;
        let who = user.unwrap_or("root");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            format!("out\ngot hi\n{who}\n"),
            "{image}"
        );
        assert_eq!(err, b"err\n");
        let ProcessEvent::Exit(exit) = last else {
            panic!("expected the exit, got {last:?}")
        };
        assert_eq!(exit.exit_code, 3, "{image}");
        // Read again from an offset: exactly the rest.
        let (out, _, chunks, _) = read_output(&agents, id, started.pid, (4, 4), false).await;
        assert_eq!(out, format!("got hi\n{who}\n").as_bytes());
        assert_eq!(chunks[0], (OutputStream::Stdout, 4, out.len()));
        let process = agents
            .processes(id)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.pid == started.pid)
            .unwrap();
        assert_eq!(process.exit.map(|e| e.exit_code), Some(3));
        assert!(!process.stdin_open);

        // Signalled: its whole group, and what it says of it.
        let sleeper = agents
            .start_process(id, &background("sleep 311 & sleep 312", user))
            .await
            .unwrap();
        agents
            .signal_process(id, sleeper.pid, ProcessSignal::Term)
            .await
            .unwrap();
        let (_, _, _, last) = read_output(&agents, id, sleeper.pid, (0, 0), true).await;
        assert!(
            matches!(last, ProcessEvent::Exit(e) if e.exit_code == 143 && e.signal == Some(15)),
            "{last:?}"
        );
        let left = sandbox
            .sh("ps -o args | grep -c 'sleep 31[12]' || true")
            .await;
        assert_eq!(
            left.stdout.trim(),
            "0",
            "{image}: the group outlived the signal"
        );

        // Unknown pids and closed stdins are not found; a bad cwd never started.
        let unknown = agents
            .signal_process(id, 999_999, ProcessSignal::Kill)
            .await;
        assert!(matches!(unknown, Err(Error::NotFound(_))), "{unknown:?}");
        let closed = agents
            .process_stdin(id, started.pid, Bytes::from_static(b"x"), false)
            .await;
        assert!(matches!(closed, Err(Error::NotFound(_))), "{closed:?}");
        let mut nowhere = background("true", user);
        nowhere.workdir = Some("/no/such/dir".into());
        let refused = agents.start_process(id, &nowhere).await;
        // A missing directory is a file problem, never taken for a sandbox that is gone.
        assert!(
            matches!(
                refused,
                Err(Error::File {
                    problem: FileProblem::NotFound,
                    ..
                })
            ),
            "{refused:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_reader_of_a_process_gets_every_byte_in_order_and_a_small_ring_says_what_it_dropped()
{
    let Some(agents) = agent_runtime().await else {
        return;
    };
    let sandbox = Sandbox::started(&agents, template()).await;
    let id = sandbox.id.as_str();
    // 4 MiB, faster than the reader below takes it: its attach is detached and attached
    // again on the way, and no byte is lost or repeated.
    let mut request = background("head -c 4194304 /dev/zero | tr '\\0' a", None);
    request.output_limit = 16 * 1024 * 1024;
    let big = agents.start_process(id, &request).await.unwrap();
    let mut events = agents
        .process_output(id, big.pid, (0, 0), true)
        .await
        .unwrap();
    let mut next = 0u64;
    let mut reads = 0u32;
    let last = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("an event within 60 s")
            .unwrap()
            .unwrap();
        match event {
            ProcessEvent::Output { offset, data, .. } => {
                assert_eq!(offset, next, "chunks are contiguous");
                assert!(data.iter().all(|b| *b == b'a'));
                next += data.len() as u64;
                reads += 1;
                if reads == 1 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            last => break last,
        }
    };
    assert_eq!(next, 4 * 1024 * 1024);
    assert!(
        matches!(last, ProcessEvent::Exit(e) if e.exit_code == 0),
        "{last:?}"
    );

    // Not following, as slowly: every byte the ring holds, then the exit (the reader is
    // detached and attached again on the way, never cut short).
    let mut events = agents
        .process_output(id, big.pid, (0, 0), false)
        .await
        .unwrap();
    let mut next = 0u64;
    let last = loop {
        let event = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("an event within 60 s")
            .unwrap()
            .unwrap();
        match event {
            ProcessEvent::Output { offset, data, .. } => {
                assert_eq!(offset, next, "chunks are contiguous");
                next += data.len() as u64;
                if next == data.len() as u64 {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
            last => break last,
        }
    };
    assert_eq!(next, 4 * 1024 * 1024);
    assert!(matches!(last, ProcessEvent::Exit(_)), "{last:?}");

    // Stdin past one frame goes in pieces, in order; a start past one frame is refused and
    // leaves the agent's connection serving.
    let mut counter = background("wc -c", None);
    counter.stdin = true;
    let counter = agents.start_process(id, &counter).await.unwrap();
    let payload = Bytes::from(vec![b'x'; 200 * 1024]);
    agents
        .process_stdin(id, counter.pid, payload, true)
        .await
        .unwrap();
    let (out, _, _, _) = read_output(&agents, id, counter.pid, (0, 0), true).await;
    assert_eq!(String::from_utf8(out).unwrap().trim(), "204800");
    let mut huge = background("true", None);
    huge.env.insert("BIG".into(), "x".repeat(9 * 1024 * 1024));
    let refused = agents.start_process(id, &huge).await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "{refused:?}"
    );
    let served = agents.agent_execs(id);
    assert_eq!(sandbox.sh("echo still").await.stdout, "still\n");
    assert_eq!(agents.agent_execs(id), served + 1, "the agent served it");

    let mut small = background("yes 0123456789 | head -c 5000", None);
    small.output_limit = 1024;
    let small = agents.start_process(id, &small).await.unwrap();
    let (_, _, _, last) = read_output(&agents, id, small.pid, (0, 0), true).await;
    assert!(matches!(last, ProcessEvent::Exit(_)), "{last:?}");
    let (out, _, chunks, _) = read_output(&agents, id, small.pid, (0, 0), false).await;
    assert_eq!(
        chunks[0].1,
        5000 - 1024,
        "the first offset says what was dropped"
    );
    assert_eq!(out.len(), 1024);
    let info = agents
        .processes(id)
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.pid == small.pid)
        .unwrap();
    assert_eq!((info.stdout.start, info.stdout.end), (5000 - 1024, 5000));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_the_agent_background_processes_are_refused_clearly() {
    let Some(plain) = runtime().await else {
        return;
    };
    let sandbox = Sandbox::started(&plain, template()).await;
    let refused = plain
        .start_process(&sandbox.id, &background("sleep 1", None))
        .await;
    match refused {
        Err(Error::Conflict(message)) => assert!(message.contains("MONZA_AGENT=off"), "{message}"),
        other => panic!("expected a conflict, got {other:?}"),
    }
}
