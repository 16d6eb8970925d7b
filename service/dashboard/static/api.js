// The dashboard's access to the HTTP API: the reader token and authenticated GETs.
//
// The token comes from `?token=` (then moved into sessionStorage and out of the address bar,
// so it is neither bookmarked nor shown) or from the login form. With auth off, none is needed.

const TOKEN_KEY = "oracle.token";

export class AuthError extends Error {}

export function adoptTokenFromAddress() {
  const url = new URL(window.location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
    url.searchParams.delete("token");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
}

export function hasToken() {
  return Boolean(sessionStorage.getItem(TOKEN_KEY));
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token.trim());
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** GET a JSON document of the API; 401/403 raise AuthError, other failures Error. */
export async function getJSON(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") url.searchParams.set(key, value);
  }
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(url, { headers, cache: "no-store" });
  if (response.status === 401 || response.status === 403) {
    throw new AuthError(await detailOf(response));
  }
  if (!response.ok) {
    throw new Error(`${url.pathname}: ${response.status} ${await detailOf(response)}`);
  }
  return response.json();
}

async function detailOf(response) {
  try {
    const body = await response.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return response.statusText;
  }
}

/** Map `items` through the async `fn`, at most `limit` at a time, keeping the order. */
export async function mapLimited(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  async function worker() {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}
