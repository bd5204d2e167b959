// The aimarket playground: a plain-JS client of the /v1 API (no framework, no build step).
// Everything shown that comes from the API or the visitor goes in as text (textContent or
// attributes), never as HTML: prompts are user input.
'use strict';

const KEYS = { token: 'aimarket.playground.token', user: 'aimarket.playground.user' };
const DEFAULT_USER = 'playground';
const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);

const $ = (id) => document.getElementById(id);

const state = {
  token: '',
  workflows: [], // GET /v1/workflows
  following: null, // AbortController of the event stream being read, if any
  shown: null, // {taskId, progress, stages}: the task in the "Task" card
};

// --- talking to the API --------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.code || 'http_error';
    this.field = body?.field || null;
  }
}

// Every /v1 call goes through here: it adds the bearer header, and turns the API's error
// bodies ({code, message, field}) into ApiError so each caller can show them where they belong.
async function api(path, { json, headers, ...options } = {}) {
  const allHeaders = { authorization: `Bearer ${state.token}`, ...headers };
  if (json !== undefined) {
    allHeaders['content-type'] = 'application/json';
    options.body = JSON.stringify(json);
  }
  const res = await fetch(path, { ...options, headers: allHeaders });
  if (res.ok) return res;
  let body = null;
  try {
    body = await res.json();
  } catch {
    // Not JSON (a proxy's error page): the status alone has to do.
  }
  const err = new ApiError(res.status, body);
  // A refused token is a connection problem, whichever call found it out.
  if (res.status === 401) tokenRefused(err);
  throw err;
}

// Server-sent events read from a fetch() body: EventSource cannot send the bearer header.
// Yields {event, data} per frame; ':' lines are keep-alive comments.
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  let event = 'message';
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      // A chunk may end between the '\r' and '\n' of one line ending: keep a trailing '\r'
      // for the next round, or it would read as an extra blank line.
      const cut = buffer.endsWith('\r') ? buffer.length - 1 : buffer.length;
      const lines = buffer.slice(0, cut).split(/\r\n|\r|\n/);
      buffer = lines.pop() + buffer.slice(cut);
      for (const line of lines) {
        if (line === '') {
          if (data.length) yield { event, data: data.join('\n') };
          event = 'message';
          data = [];
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? '' : line.slice(colon + 1);
        if (value.startsWith(' ')) value = value.slice(1);
        if (field === 'event') event = value;
        else if (field === 'data') data.push(value);
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

// Follows a task's event stream until its `done` event. A stream that ends early (a proxy
// timeout, a restarted server) is opened again after a pause; a newer follow() aborts this one.
async function follow(taskId) {
  state.following?.abort();
  const ctrl = new AbortController();
  state.following = ctrl;
  const path = `/v1/tasks/${encodeURIComponent(taskId)}/events`;
  try {
    for (let attempt = 1; attempt <= 6; attempt++) {
      try {
        const res = await api(path, { headers: { accept: 'text/event-stream' }, signal: ctrl.signal });
        for await (const { event, data } of sseEvents(res.body)) {
          if (ctrl.signal.aborted) return null;
          const view = JSON.parse(data);
          renderTask(view);
          if (event === 'done') return view;
          attempt = 1; // the stream works: start the back-off again
        }
      } catch (err) {
        if (ctrl.signal.aborted) return null;
        if (err instanceof ApiError && err.status !== 503) {
          showTaskError(`Could not follow the task: ${err.message}`);
          return null;
        }
      }
      await sleep(1000 * attempt);
      if (ctrl.signal.aborted) return null;
    }
    showTaskError('Lost the event stream several times; refresh the past tasks to see the result.');
    return null;
  } finally {
    if (state.following === ctrl) state.following = null;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// --- small DOM helpers ---------------------------------------------------------------------

// el('a', {href: url, class: 'x'}, 'text', child): attributes are set as attributes (true
// means present, false/null absent); children are nodes or strings (inserted as text).
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === false || value === null || value === undefined) continue;
    node.setAttribute(name, value === true ? '' : String(value));
  }
  node.append(...children.filter((c) => c !== null && c !== undefined && c !== ''));
  return node;
}

function showMessage(node, text) {
  node.textContent = text;
  node.hidden = !text;
}

function humanize(name) {
  const words = name.replace(/[_-]+/g, ' ');
  return words.charAt(0).toUpperCase() + words.slice(1);
}

function formatSize(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

function formatWhen(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime())
    ? iso
    : date.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

// "1.0 s · 32 kHz · 62.5 KiB" for an output (pictures have no duration or rate).
function describeOutput(output) {
  const parts = [];
  if (output.duration_s != null) parts.push(`${output.duration_s.toFixed(1)} s`);
  if (output.sample_rate != null) parts.push(`${output.sample_rate / 1000} kHz`);
  parts.push(formatSize(output.size_bytes));
  return parts.join(' · ');
}

// --- token and user ------------------------------------------------------------------------

function userId() {
  return $('user-id').value.trim() || DEFAULT_USER;
}

function setConnected(connected) {
  $('task-fields').disabled = !connected;
  $('refresh').disabled = !connected;
  $('forget').hidden = !localStorage.getItem(KEYS.token);
}

// Checks the token by listing the workflows; it is stored only once the API accepts it.
async function connect(token) {
  state.token = token;
  showMessage($('token-error'), '');
  $('token-state').textContent = 'Connecting…';
  let workflows;
  try {
    workflows = (await (await api('/v1/workflows')).json()).workflows;
  } catch (err) {
    if (!(err instanceof ApiError)) {
      disconnect(`Could not reach the API: ${err.message}`);
    } else if (err.status !== 401) {
      disconnect(`Could not load the workflows (${err.status} ${err.code}): ${err.message}`);
    }
    return; // a 401 was reported by tokenRefused()
  }
  localStorage.setItem(KEYS.token, token);
  state.workflows = workflows;
  $('token-state').textContent = `Connected: ${workflows.length} workflow(s) available.`;
  fillWorkflows();
  setConnected(true);
  refreshPast();
}

function disconnect(message) {
  state.token = '';
  state.following?.abort();
  $('token-state').textContent = '';
  showMessage($('token-error'), message);
  setConnected(false);
}

function tokenRefused(err) {
  // A refused token is useless later too: drop it so the next visit asks again.
  localStorage.removeItem(KEYS.token);
  disconnect(`The API refused this token (401 ${err.code}): ${err.message}. ` +
    'Use the MARKETPLACE_TOKEN the server runs with (aimarket serve prints it when generated).');
  $('token').focus();
}

function forgetToken() {
  localStorage.removeItem(KEYS.token);
  $('token').value = '';
  disconnect('');
  $('token-state').textContent = 'Token forgotten.';
  $('past').replaceChildren();
  showMessage($('past-empty'), 'Connect to see the past tasks.');
}

// --- the input form, generated from the workflow's JSON Schema ------------------------------

function currentWorkflow() {
  return state.workflows.find((w) => w.name === $('workflow').value) || null;
}

function fillWorkflows() {
  const select = $('workflow');
  const previous = select.value;
  select.replaceChildren(
    ...state.workflows.map((w) => el('option', { value: w.name }, `${w.name} (v${w.version})`)),
  );
  if (state.workflows.some((w) => w.name === previous)) select.value = previous;
  renderInputs();
}

// Optional fields may come as {anyOf: [{type: T}, {type: "null"}]}: use the non-null branch.
function resolveProp(prop) {
  const branch = (prop.anyOf || prop.oneOf || []).find((p) => p.type !== 'null');
  return branch ? { ...branch, ...prop, type: branch.type } : prop;
}

// "1–100 characters" or "> 0 and ≤ 30": the limits the server will check, said up front.
function describeLimits(prop) {
  if (prop.type === 'string' && !prop.enum) {
    const { minLength: min, maxLength: max } = prop;
    if (min != null && max != null) return `${min}–${max} characters`;
    if (max != null) return `up to ${max} characters`;
    if (min != null) return `at least ${min} characters`;
    return '';
  }
  const parts = [];
  if (prop.exclusiveMinimum != null) parts.push(`> ${prop.exclusiveMinimum}`);
  if (prop.minimum != null) parts.push(`≥ ${prop.minimum}`);
  if (prop.exclusiveMaximum != null) parts.push(`< ${prop.exclusiveMaximum}`);
  if (prop.maximum != null) parts.push(`≤ ${prop.maximum}`);
  return parts.join(' and ');
}

function renderInputs() {
  const wf = currentWorkflow();
  $('workflow-description').textContent = wf?.description || '';
  showMessage($('form-error'), '');
  const box = $('inputs');
  box.replaceChildren();
  if (!wf) return;
  const schema = wf.input_schema || {};
  const required = new Set(schema.required || []);
  for (const [name, raw] of Object.entries(schema.properties || {})) {
    box.append(inputField(name, resolveProp(raw), required.has(name)));
  }
}

function inputField(name, prop, required) {
  const id = `input-${name}`;
  const described = `${id}-hint ${id}-error`;
  const common = {
    id, name, 'data-input': name, 'aria-describedby': described, 'aria-required': required,
  };
  let control;
  if (Array.isArray(prop.enum)) {
    control = el('select', common, ...prop.enum.map((v, i) => el('option', { value: i }, String(v))));
    const index = prop.enum.indexOf(prop.default);
    if (index >= 0) control.value = String(index);
  } else if (prop.type === 'boolean') {
    control = el('input', { ...common, type: 'checkbox' });
    control.checked = prop.default === true;
  } else if (prop.type === 'number' || prop.type === 'integer') {
    control = el('input', {
      ...common,
      type: 'number',
      // The browser's min is inclusive; an exclusive minimum of 0 is still a useful floor.
      min: prop.minimum ?? prop.exclusiveMinimum,
      max: prop.maximum ?? prop.exclusiveMaximum,
      step: prop.type === 'integer' ? 1 : 'any',
      inputmode: prop.type === 'integer' ? 'numeric' : 'decimal',
    });
    if (prop.default != null) control.value = String(prop.default);
  } else {
    // Prompts are long-ish: a textarea unless the schema keeps the string short.
    const tag = prop.maxLength != null && prop.maxLength <= 60 ? 'input' : 'textarea';
    control = el(tag, {
      ...common,
      type: tag === 'input' ? 'text' : null,
      rows: tag === 'textarea' ? 3 : null,
      maxlength: prop.maxLength,
      minlength: prop.minLength,
    });
    if (prop.default != null) control.value = String(prop.default);
  }
  control.dataset.type = Array.isArray(prop.enum) ? 'enum' : prop.type;
  control._enum = prop.enum; // the original values: enum options carry only their index

  const label = el('label', { for: id }, prop.title || humanize(name));
  if (required) label.append(el('span', { class: 'required', title: 'required' }, ' *'));
  const hint = [prop.description, describeLimits(prop)].filter(Boolean).join(' · ');
  const parts = [
    el('p', { class: 'hint', id: `${id}-hint` }, hint),
    el('p', { class: 'error', id: `${id}-error`, hidden: true }),
  ];
  const field = prop.type === 'boolean'
    ? el('div', { class: 'field checkbox' }, el('div', { class: 'row' }, control, label), ...parts)
    : el('div', { class: 'field' }, label, control, ...parts);
  return field;
}

// The body's "input": the server is the one judge of validity (the form is novalidate), so
// values go as typed and its errors come back next to their fields.
function readInputs(wf) {
  const required = new Set(wf.input_schema?.required || []);
  const input = {};
  for (const control of $('inputs').querySelectorAll('[data-input]')) {
    const name = control.dataset.input;
    switch (control.dataset.type) {
      case 'boolean':
        input[name] = control.checked;
        break;
      case 'enum':
        input[name] = control._enum[Number(control.value)];
        break;
      case 'number':
      case 'integer':
        // Empty (or not a number): leave it out, so the server's default or error applies.
        if (control.value !== '') input[name] = Number(control.value);
        break;
      default:
        if (control.value !== '' || required.has(name)) input[name] = control.value;
    }
  }
  return input;
}

function clearFieldErrors() {
  showMessage($('form-error'), '');
  for (const control of $('inputs').querySelectorAll('[data-input]')) {
    control.removeAttribute('aria-invalid');
    showMessage($(`${control.id}-error`), '');
  }
}

// {code, message, field}: next to the field when it is one of the inputs, above the button
// otherwise.
function showSubmitError(err) {
  const name = err.field?.startsWith('input.') ? err.field.slice('input.'.length) : null;
  const control = name && $(`input-${name}`);
  if (control) {
    control.setAttribute('aria-invalid', 'true');
    showMessage($(`${control.id}-error`), err.message);
    control.focus();
    return;
  }
  const where = err.field ? ` (${err.field})` : '';
  showMessage($('form-error'), `${err.message}${where}`);
}

async function submitTask(event) {
  event.preventDefault();
  const wf = currentWorkflow();
  if (!wf) return;
  clearFieldErrors();
  const body = { workflow: wf.name, user_id: userId(), input: readInputs(wf) };
  setBusy(true);
  try {
    let task;
    try {
      task = await (await api('/v1/tasks', { method: 'POST', json: body })).json();
    } catch (err) {
      if (!(err instanceof ApiError)) showMessage($('form-error'), `Could not submit: ${err.message}`);
      else if (err.status !== 401) showSubmitError(err);
      return;
    }
    showTask(task);
    refreshPast(); // the new task is listed at once, queued
    const final = await follow(task.task_id);
    if (final) refreshPast();
  } finally {
    setBusy(false);
  }
}

function setBusy(busy) {
  const button = $('submit');
  button.disabled = busy;
  button.textContent = busy ? 'Generating…' : 'Generate';
  $('task-card').setAttribute('aria-busy', String(busy));
}

// --- the task card -------------------------------------------------------------------------

function showTask(view) {
  state.shown = { taskId: view.task_id, progress: 0, stages: {} };
  $('task-empty').hidden = true;
  $('task').hidden = false;
  $('outputs').replaceChildren();
  showMessage($('task-error'), '');
  renderTask(view);
}

function showTaskError(text) {
  showMessage($('task-error'), text);
}

// The workflow's stages in their declared order, then any the task reports that the list
// lacks (so a newer server's stages still show).
function stageIds(view) {
  const wf = state.workflows.find((w) => w.name === view.workflow);
  const ids = (wf?.stages || []).map((s) => (typeof s === 'string' ? s : s.id));
  for (const id of Object.keys(state.shown?.stages || {})) if (!ids.includes(id)) ids.push(id);
  return ids;
}

// Stage states come from two sources: pipeline events (running/done/error) and DAG stage runs
// (running/succeeded/failed/...). The page needs four looks.
function stageLook(status) {
  if (status === 'done' || status === 'succeeded') return 'done';
  if (status === 'error' || status === 'failed') return 'error';
  if (status === 'running') return 'running';
  return 'pending';
}

// How much of one stage is finished, 0..1: a foreach stage counts its items.
function stageFraction(entry, view, id) {
  const look = stageLook(entry?.status);
  if (look === 'done') return 1;
  if (entry?.items) return (entry.items_done || 0) / entry.items;
  return look === 'running' && view.stage === id && view.progress != null ? view.progress : 0;
}

function renderTask(view) {
  const shown = state.shown;
  if (!shown || shown.taskId !== view.task_id) return;
  const terminal = TERMINAL.has(view.status);
  // The final view may lack stage states (they are short-lived): keep the last ones seen.
  Object.assign(shown.stages, view.stages || {});
  const ids = stageIds(view);

  $('task-id').textContent = view.task_id;
  const badge = $('status');
  badge.textContent = view.status;
  badge.className = `badge status-${view.status}`;

  let stageText = '–';
  if (view.stage) {
    stageText = view.progress != null
      ? `${view.stage} (${Math.round(view.progress * 100)}%)`
      : `${view.stage} (running)`;
  } else if (view.status === 'queued') {
    stageText = 'waiting in the queue';
  } else if (terminal) {
    stageText = `finished ${view.finished_at ? formatWhen(view.finished_at) : ''}`.trim();
  }
  $('stage').textContent = stageText;

  // Overall progress: the mean of the stages' own fractions. It never goes backwards (a stage
  // may report before the previous one is marked done).
  const sum = ids.reduce((total, id) => total + stageFraction(shown.stages[id], view, id), 0);
  let overall = ids.length ? sum / ids.length : 0;
  if (view.status === 'succeeded') overall = 1;
  shown.progress = Math.max(shown.progress, Math.min(overall, 1));
  const bar = $('progress');
  bar.value = shown.progress;
  bar.classList.toggle('failed', view.status === 'failed' || view.status === 'cancelled');
  $('progress-text').textContent = `${Math.round(shown.progress * 100)}%`;

  $('stages').replaceChildren(
    ...ids.map((id) => {
      const entry = shown.stages[id];
      let look = stageLook(entry?.status);
      if (view.status === 'succeeded') look = 'done';
      // Without fresh states, a stage last seen running is where the task stopped.
      else if (terminal && look === 'running') look = view.status === 'failed' ? 'error' : 'pending';
      const items = entry?.items ? ` ${entry.items_done || 0}/${entry.items}` : '';
      return el('li', { class: `stage stage-${look}`, title: `${id}: ${entry?.status || look}` },
        `${id}${items}`);
    }),
  );

  if (view.error) showTaskError(`${view.error.code}: ${view.error.message}`);
  else if (view.status === 'cancelled') showTaskError('The task was cancelled.');
  if (terminal && view.outputs?.length) renderOutputs(view.outputs);
}

// Outputs come as one flat list; a workflow with several takes lists each name once per take,
// in order. So the i-th output of every name belongs to take i.
function groupTakes(outputs) {
  const count = {};
  const takes = [];
  for (const output of outputs) {
    const index = count[output.name] ?? 0;
    count[output.name] = index + 1;
    (takes[index] ||= []).push(output);
  }
  return takes;
}

function renderOutputs(outputs) {
  const takes = groupTakes(outputs);
  $('outputs').replaceChildren(...takes.map((take, i) => renderTake(take, i, takes.length)));
}

function renderTake(take, index, count) {
  // Test ids: plain for the first take ("player", "spectrogram"), then "player-2", ...
  const suffix = index === 0 ? '' : `-${index + 1}`;
  const title = count > 1 ? `Take ${index + 1}` : null;
  const box = el('div', { class: 'take', role: 'group', 'aria-label': title || 'Result' });
  if (title) box.append(el('h3', {}, title));
  for (const output of take) {
    if (output.content_type.startsWith('audio/')) {
      box.append(el('figure', { class: 'player' },
        el('audio', {
          id: `player${suffix}`, 'data-testid': `player${suffix}`, controls: true,
          preload: 'metadata', src: output.url, 'aria-label': `Generated audio${title ? `, ${title}` : ''}`,
        }),
        el('figcaption', {},
          el('span', { 'data-testid': `audio-meta${suffix}` }, describeOutput(output)), ' · ',
          el('a', { href: output.url, download: '' }, 'download'),
          el('span', { class: 'muted' },
            ` · link valid ${Math.round(output.url_expires_in_s / 60)} min`))));
    } else if (output.content_type.startsWith('image/')) {
      box.append(el('figure', { class: 'picture' },
        el('img', { src: output.url, alt: `${humanize(output.name)} of the generated audio`,
          'data-testid': `${output.name}${suffix}` }),
        el('figcaption', {}, `${humanize(output.name)} · ${formatSize(output.size_bytes)}`)));
    } else {
      box.append(el('p', {},
        el('a', { href: output.url }, output.name), ` · ${describeOutput(output)}`));
    }
  }
  return box;
}

// --- past tasks ----------------------------------------------------------------------------

async function refreshPast() {
  if (!state.token) return;
  const user = userId();
  $('past-user').textContent = `of ${user}`;
  let tasks;
  try {
    const res = await api(`/v1/tasks?user_id=${encodeURIComponent(user)}&limit=20`);
    tasks = (await res.json()).tasks;
  } catch (err) {
    showMessage($('past-empty'), `Could not list the tasks: ${err.message}`);
    return;
  }
  if (user !== userId()) return; // the user id changed while this list was on its way
  showMessage($('past-empty'), tasks.length ? '' : `No tasks for ${user} yet.`);
  $('past').replaceChildren(...tasks.map(pastItem));
}

function pastItem(task) {
  const audios = task.outputs.filter((o) => o.content_type.startsWith('audio/'));
  const [audio, takes] = [audios[0], audios.length];
  // What was asked for: the prompt, or every text input (a soundtrack has two prompts).
  const texts = Object.values(task.input || {}).filter((v) => typeof v === 'string');
  const prompt = typeof task.input?.prompt === 'string' ? task.input.prompt
    : texts.length ? texts.join(' · ') : JSON.stringify(task.input);
  const open = el('button', { type: 'button', class: 'secondary small' }, 'Show');
  open.addEventListener('click', () => {
    showTask(task);
    if (!TERMINAL.has(task.status)) follow(task.task_id).then((final) => final && refreshPast());
    $('task-card').scrollIntoView({ behavior: 'smooth', block: 'start' });
  });
  return el('li', { class: 'past-item', 'data-task-id': task.task_id },
    el('div', { class: 'past-head' },
      el('span', { class: `badge status-${task.status}` }, task.status),
      el('strong', {}, task.workflow),
      el('time', { datetime: task.created_at, class: 'muted' }, formatWhen(task.created_at)),
      open),
    el('p', { class: 'prompt', title: prompt }, prompt),
    audio
      ? el('div', { class: 'past-audio' },
        el('audio', { controls: true, preload: 'metadata', src: audio.url,
          'aria-label': `Audio of task ${task.task_id}` }),
        el('span', { class: 'muted' }, describeOutput(audio) + (takes > 1 ? ` · ${takes} takes` : '')))
      : task.error
        ? el('p', { class: 'error' }, `${task.error.code}: ${task.error.message}`)
        : null);
}

// --- start ---------------------------------------------------------------------------------

function start() {
  const userField = $('user-id');
  userField.value = localStorage.getItem(KEYS.user) || DEFAULT_USER;
  userField.addEventListener('change', () => {
    userField.value = userId();
    localStorage.setItem(KEYS.user, userField.value);
    refreshPast();
  });

  $('token-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const token = $('token').value.trim();
    if (token) connect(token);
    else showMessage($('token-error'), 'Enter the API token first.');
  });
  $('forget').addEventListener('click', forgetToken);
  $('workflow').addEventListener('change', renderInputs);
  $('task-form').addEventListener('submit', submitTask);
  $('refresh').addEventListener('click', refreshPast);

  setConnected(false);
  showMessage($('past-empty'), 'Connect to see the past tasks.');
  const saved = localStorage.getItem(KEYS.token);
  if (saved) {
    $('token').value = saved;
    connect(saved);
  }
}

start();
