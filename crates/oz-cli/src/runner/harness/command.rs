//! The `command` harness: the prompt is a shell script, run with
//! `/bin/sh -c`. For deterministic jobs, tests and demos.

use super::{Invocation, OutputMode, Request};

pub const PROGRAM: &str = "/bin/sh";
pub const INSTALL_HINT: &str = "a POSIX shell at /bin/sh";

pub fn invocation(req: &Request<'_>) -> Invocation {
    Invocation {
        label: "command".to_owned(),
        program: PROGRAM.to_owned(),
        args: vec!["-c".to_owned(), req.prompt.to_owned()],
        env: Vec::new(),
        output: OutputMode::Raw,
        install_hint: INSTALL_HINT.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::env::Env;
    use crate::runner::harness::tests::{request, s};

    #[test]
    fn the_prompt_is_the_script_and_nothing_else_matters() {
        let env = Env::default();
        let mut req = request(&env, "echo hi; exit 3");
        req.model = Some("ignored");
        req.sandboxed = true;
        req.isolate_state = true;
        req.mcp_config = Some("{}");
        let inv = invocation(&req);
        assert_eq!(inv.program, "/bin/sh");
        assert_eq!(inv.args, s(&["-c", "echo hi; exit 3"]));
        assert_eq!(inv.env, vec![]);
        assert_eq!(inv.output, OutputMode::Raw);
    }
}
