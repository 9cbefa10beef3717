#!/bin/sh
# Teardown hook for oz-agent-worker (Direct backend).
#
# Removes the clone made by setup.sh. It runs after every outcome: success,
# failure, cancel and worker shutdown. It does not run after a forced stop
# (a second signal to the worker), and it does not run for per-task
# workspaces when cleanup is off (--no-cleanup or cleanup: false).
#
# Configure it in worker.yaml:
#   backend:
#     direct:
#       teardown_command: /etc/oz-agent-worker/hooks/teardown.sh
#
# Given by the worker:
#   OZ_WORKSPACE_ROOT  the task's directory (also the current directory)
#   OZ_RUN_ID          the run id
#   OZ_TASK_RESULT     succeeded, failed or cancelled
#   GIT_CONFIG_GLOBAL  the task's git config file
#
# Teardown does NOT get the task's variables: no REPO_ROOT (the environment
# file is already deleted), no TASK_ID, nothing the control plane sent.
# It works from OZ_WORKSPACE_ROOT alone.
#
# The worker removes the whole workspace after this script anyway. Removing
# the clone here still helps: files made read-only (for example a Go module
# cache) would make that removal fail, so write access is restored first.
# A failure or a timeout here only logs a warning; the task result stays.

set -eu

log() { printf 'teardown[%s]: %s\n' "${OZ_RUN_ID:-?}" "$*" >&2; }

: "${OZ_WORKSPACE_ROOT:?must be set by oz-agent-worker}"

# Only act inside a per-task workspace made by the worker (it holds the
# worker's .oz-workspace marker). In target_dir mode OZ_WORKSPACE_ROOT is
# your shared checkout, and this script must not delete anything there.
if [ ! -f "$OZ_WORKSPACE_ROOT/.oz-workspace" ]; then
    log "not a per-task workspace; nothing to do"
    exit 0
fi

repo=$OZ_WORKSPACE_ROOT/repo
log "task ended: ${OZ_TASK_RESULT:-unknown}"

if [ -d "$repo" ]; then
    chmod -R u+w -- "$repo" 2>/dev/null || true
    rm -rf -- "$repo"
    log "removed $repo"
fi
