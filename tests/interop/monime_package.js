// Drives monime-package (npm, pinned in package-lock.json), a Monime client nobody here wrote,
// against the simulator, for tests/test_interop.py.
//
//   node monime_package.js SIMULATOR_URL CALLS_JSON
//
// MONIME_ACCESS_TOKEN and MONIME_SPACE_ID (environment) are the client's credentials. CALLS_JSON
// is an array of [method, ...arguments] of client.checkoutSession (create, get, getOne, delete),
// made in order in this one process; prints a JSON array with, per call,
// {"success", "data"} as the package returns it, or on an error {"success": false, "status",
// "body"}: the HTTP status and the body the package's error carries.
"use strict";

const axios = require("axios");
const { createClient } = require("monime-package");

const MONIME = "https://api.monime.io";

function pointAt(client, simulatorUrl) {
  // The package has no base-URL option: every call it makes is an absolute https://api.monime.io
  // URL sent through axios's default instance (its own dependency, this directory's
  // node_modules/axios). So the override lives on that instance: Monime's origin becomes the
  // simulator's, and a request to anywhere else is refused, so nothing reaches the real Monime.
  axios.interceptors.request.use((config) => {
    if (!config.url.startsWith(`${MONIME}/`)) {
      throw new Error(`monime-package called an unexpected URL: ${config.url}`);
    }
    return { ...config, url: simulatorUrl + config.url.slice(MONIME.length), proxy: false, timeout: 10000 };
  });
  return client;
}

async function main() {
  const [simulatorUrl, callsJson] = process.argv.slice(2);
  const client = pointAt(
    createClient({ accessToken: process.env.MONIME_ACCESS_TOKEN, monimeSpaceId: process.env.MONIME_SPACE_ID }),
    simulatorUrl,
  );
  const results = [];
  for (const [method, ...args] of JSON.parse(callsJson)) {
    const outcome = await client.checkoutSession[method](...args);
    if (outcome.success) {
      results.push({ success: true, data: outcome.data ?? null });
    } else if (outcome.error && outcome.error.response) {
      results.push({ success: false, status: outcome.error.response.status, body: outcome.error.response.data });
    } else {
      throw outcome.error; // no answer at all: the test fails with it
    }
  }
  process.stdout.write(JSON.stringify(results));
}

main().catch((error) => {
  process.stderr.write(`${error.stack || error}\n`);
  process.exit(1);
});
