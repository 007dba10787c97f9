// Side tasks of a job (interpolations, task evaluations: GET /v1/jobs/{id}/side-tasks) while they are pending, for
// the job page: their results land after the job may have ended, when its event stream is closed.
import { api } from "../api.js";

// How often the page asks GET /v1/jobs/{id}/side-tasks: often while one of the job's side tasks is pending, now and
// then otherwise (a request made from another client or tab).
export const SIDE_TASK_POLL_MS = { pending: 2000, idle: 10000 };

// "1 running, 2 queued on a worker: the results will appear here": the pending side tasks of one kind; "" when
// there are none.
export function pendingNote(pending, kind) {
  const mine = pending.filter((t) => t.kind === kind);
  const running = mine.filter((t) => t.status === "running").length;
  const parts = [running && `${running} running`, mine.length - running && `${mine.length - running} queued`];
  return mine.length ? `${parts.filter(Boolean).join(", ")} on a worker: the result${mine.length > 1 ? "s" : ""} `
    + "will appear here" : "";
}

// The kinds of the side tasks in `before` (id -> kind) that `now` (the pending list) no longer holds: they ended,
// their results are in.
export function endedKinds(before, now) {
  const still = new Set(now.map((t) => t.id));
  return new Set([...before].filter(([id]) => !still.has(id)).map(([, kind]) => kind));
}

// Results of side tasks land after a job may have ended, when its event stream is closed: while any of the job's
// is pending the page reads GET .../side-tasks every SIDE_TASK_POLL_MS.pending, and refreshes the section of each
// kind that ended. `expect(task)` adds one just asked for (and polls at once); `stop()` ends it.
export function watchSideTasks(jobId, sections) {
  let known = new Map();  // id -> kind of the pending side tasks last seen
  let timer = null;
  let polling = false;
  let stopped = false;
  let asked = 0;  // requests made here: an answer read before the latest one is stale
  const poll = async () => {
    clearTimeout(timer);
    if (polling || stopped) return;
    polling = true;
    const before = asked;
    let pending = null;
    try { pending = await api(`/v1/jobs/${jobId}/side-tasks`); } catch { /* the next poll tries again */ }
    polling = false;
    if (stopped) return;
    if (before !== asked) { poll(); return; }
    if (pending) {
      const ended = endedKinds(known, pending);
      known = new Map(pending.map((t) => [t.id, t.kind]));
      for (const s of sections) {
        s.pending.textContent = pendingNote(pending, s.kind);
        if (ended.has(s.kind)) s.refresh().catch(() => {});
      }
    }
    timer = setTimeout(poll, known.size ? SIDE_TASK_POLL_MS.pending : SIDE_TASK_POLL_MS.idle);
  };
  poll();
  return {
    expect: (task) => { asked += 1; if (task.status !== "done") known.set(task.id, task.kind); poll(); },
    stop: () => { stopped = true; clearTimeout(timer); },
  };
}
