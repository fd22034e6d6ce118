//! `fogswarm lab up` refuses bad input and bad states with one clear line
//! and a non-zero exit, and leaves nothing behind.

use fogswarm_e2e::{fogswarm, Run};
use std::path::Path;
use std::process::Command;

struct Case {
    what: &'static str,
    args: &'static [&'static str],
    env: &'static [(&'static str, &'static str)],
    /// PATH holds only these host tools (None: the normal PATH).
    path_tools: Option<&'static [&'static str]>,
    code: i32,
    message: &'static str,
}

const CASES: &[Case] = &[
    Case {
        what: "no devices",
        args: &["--devices", "0"],
        env: &[],
        path_tools: None,
        code: 2,
        message: "error: --devices must be at least 1",
    },
    Case {
        what: "more devices than the subnet holds",
        args: &["--devices", "300"],
        env: &[],
        path_tools: None,
        code: 2,
        message: "error: --devices 300 does not fit subnet 10.213.202.0/24, which holds at most 244 devices",
    },
    Case {
        what: "more devices than a small subnet holds",
        args: &["--devices", "5", "--subnet", "10.213.202.0/28"],
        env: &[],
        path_tools: None,
        code: 2,
        message: "does not fit subnet 10.213.202.0/28, which holds at most 4 devices",
    },
    Case {
        what: "more arm64 devices than devices",
        args: &["--devices", "1", "--arm64", "2"],
        env: &[],
        path_tools: None,
        code: 2,
        message: "error: --arm64 2 is more than --devices 1",
    },
    Case {
        what: "negative device count",
        args: &["--devices=-1"],
        env: &[],
        path_tools: None,
        code: 2,
        message: "invalid value '-1' for '--devices <DEVICES>'",
    },
    Case {
        what: "subnet with host bits",
        args: &["--subnet", "10.213.202.7/24"],
        env: &[],
        path_tools: None,
        code: 2,
        message: "did you mean 10.213.202.0/24",
    },
    Case {
        what: "subnet too large",
        args: &["--subnet", "10.0.0.0/8"],
        env: &[],
        path_tools: None,
        code: 2,
        message: "prefix /8 is outside /16 to /28",
    },
    Case {
        what: "docker not reachable",
        args: &[],
        env: &[("DOCKER_HOST", "unix:///tmp/fogswarm-no-such-dir/docker.sock")],
        path_tools: None,
        code: 1,
        message: "cannot reach Docker at /tmp/fogswarm-no-such-dir/docker.sock",
    },
    Case {
        what: "docker over tcp",
        args: &[],
        env: &[("DOCKER_HOST", "tcp://127.0.0.1:2375")],
        path_tools: None,
        code: 1,
        message: "DOCKER_HOST=tcp://127.0.0.1:2375 is not supported",
    },
    Case {
        what: "debootstrap missing when the device image must be built",
        args: &[],
        env: &[("FOGSWARM_LAB_DEVICE_IMAGE", "fogswarm-e2e/no-such-device-image:{arch}")],
        path_tools: Some(&["tar", "docker-registry"]),
        code: 1,
        message: "debootstrap not found on PATH: install it with `apt-get install debootstrap`",
    },
    Case {
        what: "docker-registry missing",
        args: &[],
        env: &[("FOGSWARM_LAB_DEVICE_IMAGE", "fogswarm-e2e/no-such-device-image:{arch}")],
        path_tools: Some(&["tar", "debootstrap"]),
        code: 1,
        message: "docker-registry not found on PATH: install it with `apt-get install docker-registry`",
    },
];

const BAD_NAME_MESSAGE: &str = "lab name \"Bad_Name\" is invalid";

fn run_up(name: &str, case: &Case, root: &Path) -> Run {
    let mut cmd = Command::new(fogswarm());
    cmd.args(["lab", "up", "--name", name, "--bare"]);
    if !case.args.contains(&"--subnet") {
        cmd.args(["--subnet", "10.213.202.0/24"]);
    }
    cmd.args(case.args).env("FOGSWARM_LAB_DIR", root);
    for (k, v) in case.env {
        cmd.env(k, v);
    }
    let _bin_dir;
    if let Some(tools) = case.path_tools {
        let dir = tempfile::tempdir().expect("tempdir");
        for tool in tools {
            let real = fogswarm_lab::tools::find_on_path(tool)
                .unwrap_or_else(|| panic!("{tool} must be installed for this test"));
            std::os::unix::fs::symlink(real, dir.path().join(tool)).expect("symlink");
        }
        cmd.env("PATH", dir.path());
        _bin_dir = dir;
    }
    cmd.output().expect("running fogswarm").into()
}

/// No container or network carries the lab's label, and no state was left.
fn assert_nothing_left(name: &str, root: &Path) {
    for kind in ["ps", "network ls"] {
        let mut args: Vec<&str> = kind.split(' ').collect();
        let filter = format!("label=io.fogswarm.lab={name}");
        args.extend(["-a", "-q", "--filter", &filter]);
        if kind != "ps" {
            args.retain(|a| *a != "-a");
        }
        let out = Command::new("docker").args(&args).output().expect("docker");
        assert!(out.status.success());
        assert!(
            out.stdout.is_empty(),
            "docker {kind} shows leftovers of lab {name}"
        );
    }
    assert!(!root.join(name).exists(), "lab dir of {name} left behind");
}

#[test]
fn bad_input_table() {
    let root = tempfile::tempdir().expect("tempdir");
    for case in CASES {
        let run = run_up("e2e-bad", case, root.path());
        assert_eq!(
            run.code, case.code,
            "{}: exit code; stderr: {}",
            case.what, run.stderr
        );
        assert!(
            run.stderr.contains(case.message),
            "{}: expected {:?} in stderr, got: {}",
            case.what,
            case.message,
            run.stderr
        );
        // One clear line (clap's usage hints aside).
        assert!(
            run.stderr.trim_start().starts_with("error:"),
            "{}: {}",
            case.what,
            run.stderr
        );
        assert_nothing_left("e2e-bad", root.path());
    }
    let bad_name = Case {
        what: "bad lab name",
        args: &[],
        env: &[],
        path_tools: None,
        code: 2,
        message: BAD_NAME_MESSAGE,
    };
    let run = run_up("Bad_Name", &bad_name, root.path());
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(run.stderr.contains(BAD_NAME_MESSAGE), "{}", run.stderr);
}

#[test]
fn a_device_whose_engine_never_comes_up_is_reported_with_its_log_and_rolled_back() {
    let root = tempfile::tempdir().expect("tempdir");
    let case = Case {
        what: "dockerd refuses to start",
        args: &[
            "--devices",
            "1",
            "--subnet",
            "10.213.203.0/24",
            "--dockerd-arg=--no-such-flag",
        ],
        env: &[],
        path_tools: None,
        code: 1,
        message: "dev1: engine never came up",
    };
    let run = run_up("e2e-deadengine", &case, root.path());
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains(case.message), "{}", run.stderr);
    assert!(
        run.stderr.contains("unknown flag: --no-such-flag"),
        "log tail missing: {}",
        run.stderr
    );
    assert!(
        run.stderr.contains("removed what it had created"),
        "{}",
        run.stderr
    );
    assert_nothing_left("e2e-deadengine", root.path());
}

#[test]
fn down_of_a_lab_that_is_not_up_fails() {
    let root = tempfile::tempdir().expect("tempdir");
    let out: Run = Command::new(fogswarm())
        .args(["lab", "down", "--name", "e2e-never-up"])
        .env("FOGSWARM_LAB_DIR", root.path())
        .output()
        .expect("fogswarm")
        .into();
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("no lab named e2e-never-up is up"),
        "{}",
        out.stderr
    );
}
