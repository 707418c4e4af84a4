'use strict';
/**
 * Cronium runtime helpers for Node scripts.
 *
 *     const cronium = require('cronium');
 *
 *     const data = await cronium.input();
 *     await cronium.output({ rows: (data.rows || []).length });
 *     await cronium.setCondition(true);
 *     const ctx = await cronium.event(); // event, execution (id, attempt, ...), workflow, user
 *
 * Every call returns a Promise. The helpers read CRONIUM_RUNTIME_API, CRONIUM_EXECUTION_TOKEN
 * and CRONIUM_EXECUTION_ID when called, never at require time.
 *
 * Errors (one tree):
 *
 *     CroniumError                 anything that went wrong talking to the runtime API
 *     ├── CroniumAPIError          the API answered with an error: statusCode, message, error
 *     └── CroniumTimeoutError      no answer in time (after the retries)
 *
 * Each call makes up to `attempts` tries (4): connection errors, timeouts and 5xx answers are
 * retried after `backoff` ms (250), doubling up to 5 s, with jitter; a 4xx answer is final.
 * A tool action is retried only when it cannot have been delivered (connection refused, 503):
 * a message must not go out twice.
 *
 * Node's own `http`/`https` modules, not `fetch`: they never go through a proxy from the
 * environment and never follow a redirect, so the bearer token goes to the runtime API and
 * nowhere else. The token lives in a private field and is in no error, message or `inspect`.
 */

const DEFAULT_TIMEOUT = 30000;
const DEFAULT_ATTEMPTS = 4;
const DEFAULT_BACKOFF = 250;
const MAX_BACKOFF = 5000;

// provisional tool ids and action of the message helpers (tool plugins arrive later)
const EMAIL_TOOL = 'email';
const SLACK_TOOL = 'slack';
const DISCORD_TOOL = 'discord';
const SEND_ACTION = 'send';

// socket errors after which a request may go again (nothing or a whole request was lost)
const CONNECTION_ERRORS = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'ETIMEDOUT',
]);

class CroniumError extends Error {
  constructor(message) {
    super(message);
    this.name = 'CroniumError';
  }
}

class CroniumAPIError extends CroniumError {
  /**
   * @param {number} statusCode the HTTP status
   * @param {string} message the API's message
   * @param {string | null} [error] the API's short error code (`unauthorized`, `not_found`, ...)
   */
  constructor(statusCode, message, error = null) {
    super(message);
    this.name = 'CroniumAPIError';
    this.statusCode = statusCode;
    this.error = error;
    // what an uncaught error prints: put the status in its first line too
    const header = `${this.name}: ${message}`;
    if (typeof this.stack === 'string' && this.stack.startsWith(header)) {
      this.stack = `${this.name}: ${statusCode}: ${message}${this.stack.slice(header.length)}`;
    }
  }
}

class CroniumTimeoutError extends CroniumError {
  constructor(message) {
    super(message);
    this.name = 'CroniumTimeoutError';
  }
}

// one try failed in a way that may succeed on the next
class Retry {
  constructor(error) {
    this.error = error;
  }
}

function env(name) {
  const value = process.env[name];
  if (!value) {
    throw new CroniumError(`${name} is not set: is this script running as a Cronium job?`);
  }
  return value;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function isObject(value) {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function toJSON(value) {
  // JSON.stringify drops undefined members; `output()` with nothing means null
  return value === undefined ? null : value;
}

class Client {
  #token;
  #url;

  /**
   * A client of the runtime API for one execution. Options left out are read from
   * CRONIUM_RUNTIME_API, CRONIUM_EXECUTION_TOKEN and CRONIUM_EXECUTION_ID.
   *
   * @param {object} [options]
   * @param {string} [options.baseUrl]
   * @param {string} [options.token]
   * @param {string} [options.executionId]
   * @param {number} [options.timeout] ms for one try, from connecting to the last byte (30000)
   * @param {number} [options.attempts] tries per call (4)
   * @param {number} [options.backoff] ms before the first retry, doubling (250)
   */
  constructor(options = {}) {
    const baseUrl = (options.baseUrl || env('CRONIUM_RUNTIME_API')).replace(/\/+$/, '');
    const token = options.token || env('CRONIUM_EXECUTION_TOKEN');
    // a header with a control character or a space makes http throw, or splits the header
    if (!/^[\x21-\x7e]+$/.test(token)) {
      throw new CroniumError('CRONIUM_EXECUTION_TOKEN is malformed');
    }
    this.#token = token;
    this.executionId = options.executionId || env('CRONIUM_EXECUTION_ID');
    this.baseUrl = baseUrl;
    this.timeout = options.timeout ?? DEFAULT_TIMEOUT;
    this.attempts = Math.max(1, options.attempts ?? DEFAULT_ATTEMPTS);
    this.backoff = options.backoff ?? DEFAULT_BACKOFF;
    let url;
    try {
      url = new URL(baseUrl);
    } catch {
      url = null;
    }
    if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:') || !url.hostname) {
      const shown = JSON.stringify(baseUrl);
      throw new CroniumError(`CRONIUM_RUNTIME_API is not an http(s) URL: ${shown}`);
    }
    this.#url = url;
  }

  [Symbol.for('nodejs.util.inspect.custom')]() {
    const { baseUrl, executionId } = this;
    return `Client { baseUrl: ${JSON.stringify(baseUrl)}, executionId: ${JSON.stringify(executionId)} }`;
  }

  toJSON() {
    return { baseUrl: this.baseUrl, executionId: this.executionId };
  }

  // -- the runtime API ------------------------------------------------------------------

  /** The input of this execution (`{}` when none). */
  input() {
    return this.#call('GET', this.#execution('input'));
  }

  /** Set this execution's output (any JSON value); the last call wins. */
  async output(data) {
    await this.#call('POST', this.#execution('output'), { data: toJSON(data) });
  }

  /** A variable's value, or null when there is no such variable. */
  async getVariable(key) {
    let data;
    try {
      data = await this.#call('GET', this.#execution('variables', String(key)));
    } catch (err) {
      if (err instanceof CroniumAPIError && err.statusCode === 404) return null;
      throw err;
    }
    return isObject(data) && 'value' in data ? data.value : data;
  }

  async setVariable(key, value) {
    await this.#call('PUT', this.#execution('variables', String(key)), { value: toJSON(value) });
  }

  /** Set the condition that a workflow's ON_CONDITION edges test. */
  async setCondition(condition) {
    if (typeof condition !== 'boolean') {
      throw new TypeError('setCondition() takes true or false');
    }
    await this.#call('POST', this.#execution('condition'), { condition });
  }

  async getCondition() {
    return Boolean(await this.#call('GET', this.#execution('condition')));
  }

  /** The context: `event`, `execution`, `workflow`, `server`, `user`. */
  event() {
    return this.#call('GET', this.#execution('context'));
  }

  /**
   * Run an action of a tool plugin; resolves to the tool's result. Not retried once the
   * request may have been delivered (a message must not go out twice).
   */
  async executeToolAction(tool, action, config = {}) {
    if (config !== null && config !== undefined && !isObject(config)) {
      throw new TypeError('executeToolAction() takes its config as an object');
    }
    const body = { tool, action, config: { ...config } };
    return this.#call('POST', '/tool-actions/execute', body, false);
  }

  /** Send an email; `to` may also be the whole config as one object. */
  sendEmail(to, subject, body, extra) {
    const config = toolConfig(to, 'to', { subject, body, ...extra });
    return this.executeToolAction(EMAIL_TOOL, SEND_ACTION, config);
  }

  sendSlackMessage(message, channel, extra) {
    const config = toolConfig(message, 'message', { channel, ...extra });
    return this.executeToolAction(SLACK_TOOL, SEND_ACTION, config);
  }

  sendDiscordMessage(message, extra) {
    const config = toolConfig(message, 'message', { ...extra });
    return this.executeToolAction(DISCORD_TOOL, SEND_ACTION, config);
  }

  // -- HTTP ---------------------------------------------------------------------------

  #execution(...parts) {
    return '/executions/' + [this.executionId, ...parts].map(encodeURIComponent).join('/');
  }

  async #call(method, path, body, idempotent = true) {
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    for (let attempt = 1; ; attempt++) {
      if (attempt > 1) await sleep(this.#delay(attempt - 1));
      try {
        return await this.#try(method, path, payload, idempotent);
      } catch (err) {
        if (!(err instanceof Retry)) throw err;
        if (attempt >= this.attempts) throw err.error;
      }
    }
  }

  #delay(retry) {
    const delay = Math.min(MAX_BACKOFF, this.backoff * 2 ** (retry - 1));
    return delay / 2 + Math.random() * (delay / 2);
  }

  #try(method, path, payload, idempotent) {
    const url = this.#url;
    const https = url.protocol === 'https:';
    const transport = https ? require('node:https') : require('node:http');
    const headers = {
      Authorization: 'Bearer ' + this.#token,
      Accept: 'application/json',
      'User-Agent': 'cronium-node-sdk',
    };
    if (payload !== null) {
      headers['Content-Type'] = 'application/json';
      headers['Content-Length'] = String(payload.length);
    }
    const prefix = url.pathname.replace(/\/+$/, '');
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (fn, value) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        fn(value);
      };
      const request = transport.request({
        protocol: url.protocol,
        // [::1] -> ::1
        hostname: url.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: url.port || (https ? 443 : 80),
        path: prefix + path,
        method,
        headers,
        agent: false, // one connection per call: nothing left open to keep the script alive
      });
      const fail = (err) => settle(reject, this.#connectionError(err, idempotent));
      // one bound for the whole try, from connecting to the last byte of the answer
      const timer = setTimeout(() => {
        settle(reject, this.#timeoutError(idempotent));
        request.destroy();
      }, this.timeout);
      request.on('error', fail);
      request.on('response', (response) => {
        const chunks = [];
        response.on('data', (chunk) => chunks.push(chunk));
        response.on('error', fail);
        response.on('end', () => {
          try {
            settle(resolve, this.#unwrap(response.statusCode, Buffer.concat(chunks), idempotent));
          } catch (err) {
            settle(reject, err);
          }
        });
      });
      request.end(payload === null ? undefined : payload);
    });
  }

  #tries() {
    return `${this.attempts} ${this.attempts === 1 ? 'try' : 'tries'}`;
  }

  #timeoutError(idempotent) {
    const error = new CroniumTimeoutError(
      `the Cronium runtime API at ${this.baseUrl} did not answer ` +
        `within ${this.timeout / 1000} s (${this.#tries()})`,
    );
    return idempotent ? new Retry(error) : error;
  }

  #connectionError(err, idempotent) {
    const code = (err && err.code) || (err && err.name) || 'Error';
    const detail = this.#scrub(String((err && err.message) || err));
    const error = new CroniumError(
      `cannot reach the Cronium runtime API at ${this.baseUrl} (${this.#tries()}): ` +
        `${code}: ${detail}`,
    );
    error.code = code;
    // refused: nothing was delivered, so even a tool action may go again
    const retry = code === 'ECONNREFUSED' || (idempotent && CONNECTION_ERRORS.has(code));
    return retry ? new Retry(error) : error;
  }

  #unwrap(status, raw, idempotent) {
    let body = null;
    try {
      body = raw.length ? JSON.parse(raw.toString('utf8')) : null;
    } catch {
      body = null;
    }
    if (status >= 200 && status < 300 && isObject(body) && body.success === true) {
      return body.data === undefined ? null : body.data;
    }
    let code = null;
    let message = `HTTP ${status}`;
    if (isObject(body)) {
      code = typeof body.error === 'string' ? body.error : null;
      message = String(body.message || code || message);
    }
    const error = new CroniumAPIError(status, this.#scrub(message), code);
    if (status >= 500 && (idempotent || status === 503)) throw new Retry(error);
    throw error;
  }

  #scrub(text) {
    return this.#token ? text.split(this.#token).join('[token]') : text;
  }
}

/** A tool config from either one object (`sendEmail({...})`) or positional fields. */
function toolConfig(first, name, fields) {
  const config = isObject(first) ? { ...first } : { [name]: first };
  for (const [key, value] of Object.entries(fields)) {
    if (value !== undefined && value !== null) config[key] = value;
  }
  return config;
}

// built per call from the environment: cheap, and right after the environment changed
function client() {
  return new Client();
}

// `async` so that a missing environment variable rejects instead of throwing

/** The input of this execution (`{}` when none). */
async function input() {
  return client().input();
}

/** Set this execution's output (any JSON value); the last call wins. */
async function output(data) {
  return client().output(data);
}

/** A variable's value, or null when there is no such variable. */
async function getVariable(key) {
  return client().getVariable(key);
}

async function setVariable(key, value) {
  return client().setVariable(key, value);
}

/** Set the condition that a workflow's ON_CONDITION edges test. */
async function setCondition(condition) {
  return client().setCondition(condition);
}

async function getCondition() {
  return client().getCondition();
}

/** The context: `event`, `execution`, `workflow`, `server`, `user`. */
async function event() {
  return client().event();
}

async function executeToolAction(tool, action, config) {
  return client().executeToolAction(tool, action, config);
}

async function sendEmail(to, subject, body, extra) {
  return client().sendEmail(to, subject, body, extra);
}

async function sendSlackMessage(message, channel, extra) {
  return client().sendSlackMessage(message, channel, extra);
}

async function sendDiscordMessage(message, extra) {
  return client().sendDiscordMessage(message, extra);
}

const version = '0.1.0';

// an object literal of names, so that `import` of this file also sees them one by one
module.exports = {
  Client,
  CroniumError,
  CroniumAPIError,
  CroniumTimeoutError,
  input,
  output,
  getVariable,
  setVariable,
  setCondition,
  getCondition,
  event,
  executeToolAction,
  sendEmail,
  sendSlackMessage,
  sendDiscordMessage,
  version,
};
