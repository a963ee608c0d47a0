// The management API as the dashboard uses it: JSON requests, the bearer token, errors.
//
// Paths are relative ("api/..."), so the page works wherever the app is mounted as long
// as it is served at its mount's root.

const TOKEN_KEY = "duraray.token";

/** An API answer that was not 2xx: `status` is the HTTP status, `message` the reason. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

let askForToken = async () => null;

/** Installs the function that asks the operator for a token (resolves to it, or null). */
export function setTokenPrompt(fn) {
  askForToken = fn;
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

// Several requests (a view plus auto-refresh) can be refused at once; they all wait for
// the one prompt instead of opening one each.
let pendingPrompt = null;

async function promptOnce(rejected) {
  if (!pendingPrompt) {
    pendingPrompt = askForToken(rejected).finally(() => {
      pendingPrompt = null;
    });
  }
  return pendingPrompt;
}

/** The human-readable reason out of an error body, whatever shape the server chose. */
function reasonOf(body, response) {
  if (body && typeof body === "object") {
    for (const key of ["message", "error", "detail", "reason"]) {
      const value = body[key];
      if (typeof value === "string" && value) return value;
      if (value && typeof value === "object" && typeof value.message === "string") {
        return value.message;
      }
    }
  }
  if (typeof body === "string" && body.trim()) return body.trim();
  return response.statusText || "request failed";
}

/**
 * Sends one request. `body` is a string of JSON text (sent as is) or undefined.
 * Resolves to {status, data, headers}; throws ApiError for a non-2xx answer.
 */
export async function request(method, path, { body, headers = {} } = {}) {
  for (let attempt = 0; ; attempt += 1) {
    const sent = { Accept: "application/json", ...headers };
    const token = getToken();
    if (token) sent.Authorization = `Bearer ${token}`;
    if (body !== undefined) sent["Content-Type"] = "application/json";

    const response = await fetch(path, { method, headers: sent, body });
    const text = await response.text();
    let data = text;
    if ((response.headers.get("Content-Type") || "").includes("json") && text) {
      try {
        data = JSON.parse(text);
      } catch {
        // Keep the text: a broken body is still worth showing in an error.
      }
    }

    if (response.status === 401 && attempt < 3) {
      // The first refusal asks for a token; a later one means the token was wrong.
      if (token) forgetToken();
      const entered = await promptOnce(Boolean(token));
      if (entered) {
        sessionStorage.setItem(TOKEN_KEY, entered);
        continue;
      }
    }
    if (!response.ok) {
      throw new ApiError(response.status, reasonOf(data, response), data);
    }
    return { status: response.status, data, headers: response.headers };
  }
}

const enc = encodeURIComponent;

/** Builds "path?k=v&..." leaving out empty values. */
function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

const CONTINUATION = "x-ms-continuation-token";

/**
 * The query of an instance filter: {statuses: [..], from, to (ISO 8601), prefix, name,
 * tags: ["key:value", ..]} as the API's parameters (runtimeStatus, createdTimeFrom, ...).
 */
function instanceQuery(filters) {
  const query = new URLSearchParams();
  const set = (key, value) => {
    if (value !== undefined && value !== null && value !== "") query.set(key, value);
  };
  set("runtimeStatus", (filters.statuses || []).join(","));
  set("createdTimeFrom", filters.from);
  set("createdTimeTo", filters.to);
  set("instanceIdPrefix", filters.prefix);
  set("name", filters.name);
  for (const tag of filters.tags || []) query.append("tag", tag);
  return query;
}

function withParams(path, query) {
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** One page of instances: {items, next} (next: the continuation token or null). */
export async function listInstances(filters, { top, newestFirst = true, token } = {}) {
  const query = instanceQuery(filters);
  query.set("top", String(top));
  query.set("newestFirst", String(newestFirst));
  const headers = token ? { [CONTINUATION]: token } : {};
  const { data, headers: got } = await request("GET", withParams("api/instances", query), { headers });
  return { items: Array.isArray(data) ? data : [], next: got.get(CONTINUATION) || null };
}

/** Instances matching the filters, by status: {Running: n, Completed: n, ...}. */
export async function countInstances(filters) {
  const { data } = await request("GET", withParams("api/instance-counts", instanceQuery(filters)));
  return data && typeof data === "object" ? data : {};
}

/**
 * Terminates ("terminate") or purges ("purge") every instance the filters match, on the
 * server; resolves to how many. With no filter at all the server wants all=true.
 */
export async function actOnMatching(action, filters) {
  const query = instanceQuery(filters);
  if (!query.toString()) query.set("all", "true");
  const { data } = await request("POST", withParams(`api/instances/${action}`, query));
  const done = data && (action === "terminate" ? data.terminated : data.purged);
  return Number(done) || 0;
}

export async function getInstance(id) {
  const { data } = await request(
    "GET",
    withQuery(`api/instances/${enc(id)}`, { showHistory: "true", showInput: "true" }),
  );
  return data;
}

export function raiseEvent(id, eventName, jsonText) {
  return request("POST", `api/instances/${enc(id)}/raiseEvent/${enc(eventName)}`, {
    body: jsonText,
  });
}

/** One of terminate, suspend, resume, rewind, restart (a POST without a body). */
export function instanceAction(id, action) {
  return request("POST", `api/instances/${enc(id)}/${action}`);
}

export function purgeInstance(id) {
  return request("DELETE", `api/instances/${enc(id)}`);
}

/** One page of entities: {items, next}. */
export async function listEntities(filters, token) {
  const headers = token ? { [CONTINUATION]: token } : {};
  const { data, headers: got } = await request(
    "GET",
    withQuery("api/entities", { name: filters.name, top: filters.top }),
    { headers },
  );
  return { items: Array.isArray(data) ? data : [], next: got.get(CONTINUATION) || null };
}

export async function getEntity(name, key) {
  const { data } = await request("GET", `api/entities/${enc(name)}/${enc(key)}`);
  return data;
}

export async function listPartitions() {
  const { data } = await request("GET", "api/partitions");
  return Array.isArray(data) ? data : [];
}
