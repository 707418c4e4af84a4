// Types of the Cronium runtime helpers (CommonJS: `require('cronium')`).

/** Any value that survives a trip through JSON. */
export type JSONValue =
  | string
  | number
  | boolean
  | null
  | JSONValue[]
  | { [key: string]: JSONValue };

/** What `event()` resolves to. */
export interface Context {
  event: {
    id: string;
    name: string;
    /** `bash`, `python`, `node`, `http` or `tool` */
    type: string;
    executor: string;
    runs: { total: number; succeeded: number; failed: number };
  };
  execution: {
    id: string;
    /** 1 for the first try, 2 for the first retry, ... */
    attempt: number;
    /** `manual`, `schedule`, `workflow`, ... */
    trigger: string;
    /** ISO 8601, UTC */
    started_at: string | null;
  };
  /** null unless the execution is a node of a workflow run */
  workflow: { run_id: string; node_id: string | null } | null;
  /** the server a remote executor ran the script on, else null */
  server: Record<string, unknown> | null;
  user: { id: string };
  [key: string]: unknown;
}

export interface ClientOptions {
  /** default: CRONIUM_RUNTIME_API */
  baseUrl?: string;
  /** default: CRONIUM_EXECUTION_TOKEN */
  token?: string;
  /** default: CRONIUM_EXECUTION_ID */
  executionId?: string;
  /** ms for one try, from connecting to the last byte of the answer (30000) */
  timeout?: number;
  /** tries per call (4) */
  attempts?: number;
  /** ms before the first retry, doubling up to 5000, with jitter (250) */
  backoff?: number;
}

export interface EmailConfig {
  to: string | string[];
  subject?: string;
  body?: string;
  [field: string]: unknown;
}

export interface SlackConfig {
  message: string;
  channel?: string;
  [field: string]: unknown;
}

export interface DiscordConfig {
  message: string;
  [field: string]: unknown;
}

/** Anything that went wrong talking to the Cronium runtime API. */
export declare class CroniumError extends Error {
  /** the socket error code (`ECONNREFUSED`, ...) when the API could not be reached */
  code?: string;
}

/** The runtime API answered with an error. */
export declare class CroniumAPIError extends CroniumError {
  constructor(statusCode: number, message: string, error?: string | null);
  /** the HTTP status */
  readonly statusCode: number;
  /** the API's short error code (`unauthorized`, `not_found`, ...), when it sent one */
  readonly error: string | null;
}

/** The runtime API did not answer in time (after the retries). */
export declare class CroniumTimeoutError extends CroniumError {}

/** A client of the runtime API for one execution; the functions below use a fresh one each. */
export declare class Client {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  readonly executionId: string;
  timeout: number;
  attempts: number;
  backoff: number;
  input<T = any>(): Promise<T>;
  output(data: unknown): Promise<void>;
  getVariable<T = any>(key: string): Promise<T | null>;
  setVariable(key: string, value: unknown): Promise<void>;
  setCondition(condition: boolean): Promise<void>;
  getCondition(): Promise<boolean>;
  event(): Promise<Context>;
  executeToolAction<T = any>(
    tool: string,
    action: string,
    config?: Record<string, unknown>,
  ): Promise<T>;
  sendEmail<T = any>(config: EmailConfig): Promise<T>;
  sendEmail<T = any>(
    to: string | string[],
    subject?: string,
    body?: string,
    extra?: Record<string, unknown>,
  ): Promise<T>;
  sendSlackMessage<T = any>(config: SlackConfig): Promise<T>;
  sendSlackMessage<T = any>(
    message: string,
    channel?: string,
    extra?: Record<string, unknown>,
  ): Promise<T>;
  sendDiscordMessage<T = any>(config: DiscordConfig): Promise<T>;
  sendDiscordMessage<T = any>(message: string, extra?: Record<string, unknown>): Promise<T>;
}

/** The input of this execution (`{}` when none). */
export declare function input<T = any>(): Promise<T>;
/** Set this execution's output (any JSON value); the last call wins. */
export declare function output(data: unknown): Promise<void>;
/** A variable's value, or null when there is no such variable. */
export declare function getVariable<T = any>(key: string): Promise<T | null>;
export declare function setVariable(key: string, value: unknown): Promise<void>;
/** Set the condition that a workflow's ON_CONDITION edges test. */
export declare function setCondition(condition: boolean): Promise<void>;
/** The condition set by this execution (false when unset). */
export declare function getCondition(): Promise<boolean>;
/** The context: event, execution, workflow, server, user. */
export declare function event(): Promise<Context>;
/** Run an action of a tool plugin; resolves to the tool's result. */
export declare function executeToolAction<T = any>(
  tool: string,
  action: string,
  config?: Record<string, unknown>,
): Promise<T>;
export declare function sendEmail<T = any>(config: EmailConfig): Promise<T>;
export declare function sendEmail<T = any>(
  to: string | string[],
  subject?: string,
  body?: string,
  extra?: Record<string, unknown>,
): Promise<T>;
export declare function sendSlackMessage<T = any>(config: SlackConfig): Promise<T>;
export declare function sendSlackMessage<T = any>(
  message: string,
  channel?: string,
  extra?: Record<string, unknown>,
): Promise<T>;
export declare function sendDiscordMessage<T = any>(config: DiscordConfig): Promise<T>;
export declare function sendDiscordMessage<T = any>(
  message: string,
  extra?: Record<string, unknown>,
): Promise<T>;
export declare const version: string;
