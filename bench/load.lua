-- The wrk script of bench/run (one wrk thread: -t1). Environment:
--   BENCH_FILE   the requests, one a line: METHOD TAB PATH TAB HEADERS TAB BODY, sent in order and
--                cycled; HEADERS is "Name: value|Name: value" or "-"; "{n}" in a header value or
--                the body becomes a number unique in the run (a new orderId per request)
--   BENCH_DELAY  milliseconds each connection pauses between requests (the light probes); 0 = flat out
-- done() prints one line: BENCH {"requests":..,"p50_us":..,"statuses":{..},"outcomes":{..},..}

local lines, next_line, counter = {}, 1, 0
local pause = tonumber(os.getenv("BENCH_DELAY") or "0")
statuses, outcomes, duplicates = {}, {}, 0 -- globals, so done() can collect them from the thread

function init(args)
  for line in io.lines(os.getenv("BENCH_FILE")) do
    local method, path, header_text, body = line:match("^([^\t]+)\t([^\t]+)\t([^\t]+)\t(.*)$")
    local headers = {}
    for name, value in header_text:gmatch("([^|:]+): ([^|]+)") do
      headers[name] = value
    end
    table.insert(lines, { method = method, path = path, headers = headers, body = body })
  end
end

if pause > 0 then -- defined only when pacing, so flat-out runs skip wrk's timer
  function delay()
    return pause
  end
end

function request()
  local r = lines[next_line]
  next_line = next_line % #lines + 1
  if r.body == "" then
    return wrk.format(r.method, r.path)
  end
  counter = counter + 1
  local n = tostring(counter)
  local headers = { ["Content-Type"] = "application/json" }
  for name, value in pairs(r.headers) do
    headers[name] = (value:gsub("{n}", n))
  end
  return wrk.format(r.method, r.path, headers, (r.body:gsub("{n}", n)))
end

function response(status, headers, body)
  body = body or ""
  statuses[status] = (statuses[status] or 0) + 1
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

function done(summary, latency, requests)
  local all_statuses, all_outcomes, all_duplicates = {}, {}, 0
  for _, thread in ipairs(threads) do
    add(all_statuses, thread:get("statuses"))
    add(all_outcomes, thread:get("outcomes"))
    all_duplicates = all_duplicates + thread:get("duplicates")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"statuses":%s,"outcomes":%s,"duplicates":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    e.connect, e.read, e.write, e.timeout,
    json_counts(all_statuses), json_counts(all_outcomes), all_duplicates
  ))
end
