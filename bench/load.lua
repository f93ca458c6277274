-- The wrk script of bench/run (one wrk thread: -t1). Environment:
--   BENCH_FILE     the requests, one a line: METHOD TAB PATH TAB HEADERS TAB BODY, sent in order and
--                  cycled; HEADERS is "Name: value|Name: value" or "-"; "{n}" in a header value or
--                  the body becomes a number unique in the run (a new orderId per request)
--   BENCH_DELAY    milliseconds each connection pauses between requests (the light probes); 0 = flat out
--   BENCH_BACKOFF  1: behave like a frontend that is told to come back later. A 503 whose body says
--                  "monime_busy" (the service shed the checkout) is also counted as shed, and a client
--                  waits 0.5-1.5 x its Retry-After (1 s when it has none) before its next request
--                  instead of retrying at once. wrk's delay() hook takes no connection, so the wait
--                  goes to the next request scheduled after the 503 (in a closed loop of identical
--                  clients the same thing: one client idles for that long). The wait is not latency:
--                  wrk starts the clock when the request is sent.
--   BENCH_TAG      1: send "X-Request-ID: bench-<n>" (the service echoes it) and time each answer
--                  here, so the latency of answers served (2xx) and shed (503 monime_busy) is known
--                  apart; wrk's own percentiles mix them.
-- done() prints one line: BENCH {"requests":..,"p50_us":..,"statuses":{..},"outcomes":{..},..}

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]])
local clock = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000000 + tonumber(clock.tv_nsec) / 1000
end

local lines, next_line, counter = {}, 1, 0
local pause = tonumber(os.getenv("BENCH_DELAY") or "0")
local backoff = os.getenv("BENCH_BACKOFF") == "1"
local tag = os.getenv("BENCH_TAG") == "1"
local waits, sent_at = {}, {} -- pending backoffs (ms); send time of each tagged request in flight
-- globals, so done() can collect them from the thread
statuses, outcomes, duplicates = {}, {}, 0
shed, shed_without_retry_after = 0, 0
served_us, shed_us = {}, {} -- latencies of tagged answers, served (2xx) and shed

function init(args)
  math.randomseed(os.time())
  for line in io.lines(os.getenv("BENCH_FILE")) do
    local method, path, header_text, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)$")
    local headers = {}
    for name, value in header_text:gmatch("([^|:]+): ([^|]+)") do
      headers[name] = value
    end
    table.insert(lines, { method = method, path = path, headers = headers, body = body })
  end
end

if pause > 0 or backoff then -- defined only when needed, so flat-out runs skip wrk's timer
  function delay()
    if #waits > 0 then
      return pause + table.remove(waits, 1)
    end
    return pause
  end
end

function request()
  local r = lines[next_line]
  next_line = next_line % #lines + 1
  if r.body == "" and not tag then
    return wrk.format(r.method, r.path)
  end
  counter = counter + 1
  local n = tostring(counter)
  local headers = {}
  if r.body ~= "" then
    headers["Content-Type"] = "application/json"
  end
  for name, value in pairs(r.headers) do
    headers[name] = (value:gsub("{n}", n))
  end
  if tag then
    headers["X-Request-ID"] = "bench-" .. n
    sent_at[headers["X-Request-ID"]] = now_us()
  end
  return wrk.format(r.method, r.path, headers, r.body ~= "" and (r.body:gsub("{n}", n)) or nil)
end

local function header(headers, wanted)
  for name, value in pairs(headers) do
    if name:lower() == wanted then
      return value
    end
  end
  return nil
end

function response(status, headers, body)
  body = body or ""
  statuses[status] = (statuses[status] or 0) + 1
  local was_shed = backoff and status == 503 and body:find('"monime_busy"', 1, true) ~= nil
  if was_shed then
    shed = shed + 1
    local retry_after = tonumber(header(headers, "retry-after") or "")
    if retry_after == nil then
      shed_without_retry_after = shed_without_retry_after + 1
      retry_after = 1
    end
    table.insert(waits, math.floor(retry_after * 1000 * (0.5 + math.random())))
  end
  if tag then
    local id = header(headers, "x-request-id")
    local began = id and sent_at[id]
    if began then
      sent_at[id] = nil
      local took = now_us() - began
      if was_shed then
        table.insert(shed_us, took)
      elseif status >= 200 and status < 300 then
        table.insert(served_us, took)
      end
    end
  end
  local outcome = body:match('"outcome":"(%a+)"')
  if outcome then
    outcomes[outcome] = (outcomes[outcome] or 0) + 1
  end
  if body:find('"duplicate":true', 1, true) then
    duplicates = duplicates + 1
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local function json_counts(counts)
  local parts = {}
  for key, n in pairs(counts) do
    table.insert(parts, string.format('"%s":%d', key, n))
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function add(total, counts)
  for key, n in pairs(counts) do
    total[key] = (total[key] or 0) + n
  end
end

local function append(all, samples)
  for _, value in ipairs(samples) do
    table.insert(all, value)
  end
end

local function percentile(samples, p) -- nearest rank; -1 when there are none
  if #samples == 0 then
    return -1
  end
  table.sort(samples)
  return samples[math.max(1, math.ceil(#samples * p / 100))]
end

function done(summary, latency, requests)
  local all_statuses, all_outcomes, all_duplicates, all_shed, all_bare = {}, {}, 0, 0, 0
  local served, shed_times = {}, {}
  for _, thread in ipairs(threads) do
    add(all_statuses, thread:get("statuses"))
    add(all_outcomes, thread:get("outcomes"))
    all_duplicates = all_duplicates + thread:get("duplicates")
    all_shed = all_shed + thread:get("shed")
    all_bare = all_bare + thread:get("shed_without_retry_after")
    append(served, thread:get("served_us"))
    append(shed_times, thread:get("shed_us"))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"statuses":%s,"outcomes":%s,"duplicates":%d,"shed":%d,"shed_without_retry_after":%d,'
      .. '"served_timed":%d,"served_p50_us":%d,"served_p99_us":%d,"shed_timed":%d,"shed_p50_us":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout,
    json_counts(all_statuses), json_counts(all_outcomes), all_duplicates, all_shed, all_bare,
    #served, percentile(served, 50), percentile(served, 99), #shed_times, percentile(shed_times, 50)
  ))
end
