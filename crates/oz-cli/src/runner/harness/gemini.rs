//! Google Gemini CLI: `gemini -p <prompt> [-m M] [--yolo]`.

use super::{Invocation, OutputMode, Request, positional};

pub const PROGRAM: &str = "gemini";
pub const INSTALL_HINT: &str = "npm install -g @google/gemini-cli";

pub fn invocation(req: &Request<'_>) -> Invocation {
    let mut args = vec!["-p".to_owned(), positional(req.prompt)];
    if let Some(model) = req.model {
        args.extend(["-m".to_owned(), model.to_owned()]);
    }
    if req.sandboxed {
        args.push("--yolo".to_owned());
    }
    Invocation {
        label: "gemini".to_owned(),
        program: PROGRAM.to_owned(),
        args,
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
    fn argv_minimal() {
        let env = Env::default();
        let mut req = request(&env, "fix it");
        req.isolate_state = true;
        let inv = invocation(&req);
        assert_eq!(inv.program, "gemini");
        assert_eq!(inv.args, s(&["-p", "fix it"]));
        assert_eq!(inv.env, vec![]);
    }

    #[test]
    fn argv_with_model_and_sandbox() {
        let env = Env::default();
        let mut req = request(&env, "fix it");
        req.model = Some("gemini-2.5-pro");
        req.sandboxed = true;
        assert_eq!(
            invocation(&req).args,
            s(&["-p", "fix it", "-m", "gemini-2.5-pro", "--yolo"])
        );
    }
}
