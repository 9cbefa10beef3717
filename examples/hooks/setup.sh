#!/bin/sh
# Setup hook for oz-agent-worker (Direct backend).
#
# Clones a repository into $OZ_WORKSPACE_ROOT/repo and tells the agent where
# it is through the environment file (REPO_ROOT).
#
# Configure it in worker.yaml:
#   backend:
#     direct:
#       setup_command: /etc/oz-agent-worker/hooks/setup.sh
#
# Settings, read from the worker's environment (for example the systemd
# EnvironmentFile). Setup sees the worker's environment, the agent does not.
#   REPO_URL   repository to clone (required)
#   REPO_REF   branch or tag to check out (default: main)
#   GIT_USER_NAME, GIT_USER_EMAIL   optional identity for the agent's commits
#
# Given by the worker:
#   OZ_WORKSPACE_ROOT    the task's directory (also the current directory)
#   OZ_ENVIRONMENT_FILE  file whose KEY=VALUE lines are added to the agent's env
#   OZ_RUN_ID            the run id
#   GIT_CONFIG_GLOBAL    a per-task git config file; ~/.gitconfig is not read
#
# Notes:
# - Do not use "set -x": the trace goes to the worker's log and can show
#   tokens the control plane sent with the run.
# - The repository cannot be cloned into $OZ_WORKSPACE_ROOT itself: that
#   directory already holds the worker's files (.oz-workspace, the env file).
# - Git credentials: ~/.gitconfig is hidden by GIT_CONFIG_GLOBAL, so a
#   credential helper configured there is not used. Use the worker user's
#   SSH key (~/.ssh), a system-wide helper (/etc/gitconfig), or write what
#   you need with "git config --global" below.
# - Anything this script leaves running in the background is stopped when
#   the task ends.
# - A non-zero exit fails the task (failure_reason setup_command); the agent
#   does not run, and teardown still runs.

set -eu

log() { printf 'setup[%s]: %s\n' "$OZ_RUN_ID" "$*" >&2; }

# Append KEY='value' to the environment file. Single quotes keep the value
# literal ($, # and spaces are safe). A value holding a single quote or a
# newline cannot be written that way, so it is refused.
add_env() {
    case "$2" in
        *"'"* | *'
'*)
            log "cannot write $1 to the environment file: unsupported character"
            return 1
            ;;
    esac
    printf "%s='%s'\n" "$1" "$2" >>"$OZ_ENVIRONMENT_FILE"
}

: "${OZ_WORKSPACE_ROOT:?must be set by oz-agent-worker}"
: "${OZ_ENVIRONMENT_FILE:?must be set by oz-agent-worker}"
: "${OZ_RUN_ID:?must be set by oz-agent-worker}"
: "${REPO_URL:?set REPO_URL in the worker environment}"
REPO_REF=${REPO_REF:-main}

repo=$OZ_WORKSPACE_ROOT/repo

# Never wait for a password or a host-key answer: stdin is /dev/null.
GIT_SSH_COMMAND=${GIT_SSH_COMMAND:-ssh -o BatchMode=yes}
export GIT_SSH_COMMAND

if [ -d "$repo/.git" ]; then
    # The workspace was kept (cleanup off) and the same run came back.
    # Keep the earlier clone and whatever the agent did in it.
    log "reusing the existing clone in $repo"
else
    log "cloning $REPO_URL ($REPO_REF)"
    # Partial clone: full history, file contents fetched on demand.
    git clone --quiet --filter=blob:none --branch "$REPO_REF" -- "$REPO_URL" "$repo"
fi

# Optional commit identity. "git config --global" writes to the per-task
# file in GIT_CONFIG_GLOBAL, which the agent also uses.
if [ -n "${GIT_USER_NAME:-}" ] && [ -n "${GIT_USER_EMAIL:-}" ]; then
    git config --global user.name "$GIT_USER_NAME"
    git config --global user.email "$GIT_USER_EMAIL"
fi

add_env REPO_ROOT "$repo"
log "ready: REPO_ROOT=$repo at $(git -C "$repo" rev-parse --short HEAD)"
