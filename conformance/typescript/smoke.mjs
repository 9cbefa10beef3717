// Smoke test of oz-server through the official TypeScript SDK (npm
// `oz-agent-sdk` 1.0.0-alpha.8, the only version published: it has 12 of the
// 23 methods). Started by conformance/python/test_typescript_sdk.py against
// the suite's server and worker, once per group:
//
//   node smoke.mjs runs|schedules|skills
//
// Env: OZ_API_BASE_URL, WARP_API_KEY, OZ_CONFORMANCE_WORKER_HOST (served by a
// real worker), OZ_CONFORMANCE_UNSERVED_HOST (served by nobody).
// Prints "ok - …" / "not ok - …" per check; exit 1 if any check failed.
import { OzAPI, AuthenticationError, BadRequestError, NotFoundError } from 'oz-agent-sdk';
import { randomUUID } from 'node:crypto';

const env = (name) => {
  const v = process.env[name];
  if (!v) {
    console.error(`${name} is not set`);
    process.exit(2);
  }
  return v;
};
const baseURL = env('OZ_API_BASE_URL');
const apiKey = env('WARP_API_KEY');
const workerHost = env('OZ_CONFORMANCE_WORKER_HOST');
const unserved = env('OZ_CONFORMANCE_UNSERVED_HOST');
const client = new OzAPI({ baseURL, apiKey, maxRetries: 0, timeout: 20_000 });
const TERMINAL = new Set(['SUCCEEDED', 'FAILED', 'ERROR', 'BLOCKED', 'CANCELLED']);

let failed = 0;
async function check(name, f) {
  try {
    await f();
    console.log(`ok - ${name}`);
  } catch (e) {
    failed += 1;
    console.log(`not ok - ${name}: ${e?.message ?? e}`);
  }
}
function expect(cond, what) {
  if (!cond) throw new Error(`expected ${what}`);
}
function eq(got, want, what) {
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${what}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}
async function rejects(promise, cls, status) {
  try {
    await promise;
  } catch (e) {
    expect(e instanceof cls, `${cls.name}, got ${e?.constructor?.name}: ${e?.message}`);
    eq(e.status, status, 'status');
    return e;
  }
  throw new Error(`expected ${cls.name}, the call succeeded`);
}
const tag = () => randomUUID().replaceAll('-', '').slice(0, 12);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function waitTerminal(runId) {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const run = await client.agent.runs.retrieve(runId);
    if (TERMINAL.has(run.state)) return run;
    if (Date.now() > deadline) throw new Error(`run ${runId} did not end; last state ${run.state}`);
    await sleep(100);
  }
}

async function runs() {
  await check('agent.run + runs.retrieve: a real run SUCCEEDS', async () => {
    const t = tag();
    const created = await client.agent.run({
      prompt: `echo ts ${t}`,
      title: `ts smoke ${t}`,
      config: { worker_host: workerHost },
      metadata: { case: t },
    });
    eq(created.state, 'QUEUED', 'state');
    eq(created.task_id, created.run_id, 'task_id');
    const run = await waitTerminal(created.run_id);
    eq(run.state, 'SUCCEEDED', 'final state');
    eq(run.prompt, `echo ts ${t}`, 'prompt');
    eq(run.title, `ts smoke ${t}`, 'title');
    eq(run.metadata, { case: t }, 'metadata');
    eq(run.agent_config?.worker_host, workerHost, 'agent_config.worker_host');
  });
  await check('runs.list: cursor pagination with limit 2 and q', async () => {
    const t = tag();
    const made = [];
    for (let i = 0; i < 3; i++) {
      const r = await client.agent.run({
        prompt: `echo page ${i}`,
        title: `tspage${t} ${i}`,
        config: { worker_host: unserved },
      });
      made.push(r.run_id);
    }
    const first = await client.agent.runs.list({ q: `tspage${t}`, limit: 2 });
    eq(first.runs.length, 2, 'first page size');
    eq(first.page_info.has_next_page, true, 'has_next_page');
    expect(first.page_info.next_cursor, 'a next_cursor');
    const second = await client.agent.runs.list({
      q: `tspage${t}`,
      limit: 2,
      cursor: first.page_info.next_cursor,
    });
    eq(second.runs.length, 1, 'second page size');
    eq(second.page_info.has_next_page, false, 'last page has_next_page');
    const seen = [...first.runs, ...second.runs].map((r) => r.run_id).sort();
    eq(seen, [...made].sort(), 'runs over both pages');
    for (const id of made) await client.agent.runs.cancel(id);
  });
  await check('runs.cancel: queued -> CANCELLED, terminal -> 400, unknown -> 404', async () => {
    const created = await client.agent.run({
      prompt: 'echo cancel',
      config: { worker_host: unserved },
    });
    const answer = await client.agent.runs.cancel(created.run_id);
    eq(String(answer).replaceAll('"', ''), created.run_id, 'cancel answer');
    eq((await client.agent.runs.retrieve(created.run_id)).state, 'CANCELLED', 'state');
    await rejects(client.agent.runs.cancel(created.run_id), BadRequestError, 400);
    await rejects(client.agent.runs.cancel(randomUUID()), NotFoundError, 404);
  });
  await check('runs.retrieve unknown -> NotFoundError', async () => {
    await rejects(client.agent.runs.retrieve(randomUUID()), NotFoundError, 404);
  });
  await check('a wrong API key -> AuthenticationError', async () => {
    const bad = new OzAPI({ baseURL, apiKey: 'ozk_' + '0'.repeat(64), maxRetries: 0 });
    await rejects(bad.agent.runs.list(), AuthenticationError, 401);
  });
}

async function schedules() {
  await check('schedules: create, retrieve, update, list, pause, resume, delete', async () => {
    const t = tag();
    const s = await client.agent.schedules.create({
      cron_schedule: '0 9 * * *',
      name: `ts-sched-${t}`,
      prompt: `echo ${t}`,
      enabled: true,
      agent_config: { worker_host: unserved },
    });
    expect(s.id, 'an id');
    eq(
      [s.name, s.cron_schedule, s.prompt, s.enabled],
      [`ts-sched-${t}`, '0 9 * * *', `echo ${t}`, true],
      'created',
    );
    eq(s.agent_config?.worker_host, unserved, 'agent_config.worker_host');
    expect(s.history?.next_run, 'history.next_run');
    eq((await client.agent.schedules.retrieve(s.id)).name, `ts-sched-${t}`, 'retrieved name');
    const u = await client.agent.schedules.update(s.id, {
      cron_schedule: '30 6 * * 1-5',
      enabled: true,
      name: `ts-sched-${t}-b`,
      prompt: `echo ${t} b`,
    });
    eq(
      [u.cron_schedule, u.name, u.prompt],
      ['30 6 * * 1-5', `ts-sched-${t}-b`, `echo ${t} b`],
      'updated',
    );
    const names = (await client.agent.schedules.list()).schedules.map((x) => x.name);
    expect(names.includes(`ts-sched-${t}-b`), 'the schedule in the list');
    eq(names, [...names].sort(), 'list sorted by name');
    eq((await client.agent.schedules.pause(s.id)).enabled, false, 'paused');
    eq((await client.agent.schedules.resume(s.id)).enabled, true, 'resumed');
    eq(await client.agent.schedules.delete(s.id), { success: true }, 'delete answer');
    await rejects(client.agent.schedules.retrieve(s.id), NotFoundError, 404);
  });
  await check('schedules.create with a bad cron -> BadRequestError', async () => {
    await rejects(
      client.agent.schedules.create({
        cron_schedule: 'not a cron',
        name: `ts-bad-${tag()}`,
        prompt: 'x',
      }),
      BadRequestError,
      400,
    );
  });
}

async function skills() {
  await check('agent.list -> {agents: [...]}', async () => {
    const answer = await client.agent.list();
    expect(Array.isArray(answer.agents), `agents to be an array: ${JSON.stringify(answer)}`);
  });
}

const groups = { runs, schedules, skills };
const group = process.argv[2];
if (!groups[group]) {
  console.error(`usage: node smoke.mjs ${Object.keys(groups).join('|')}`);
  process.exit(2);
}
await groups[group]();
process.exit(failed ? 1 : 0);
