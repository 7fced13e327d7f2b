-- wrk script for scripts/bench-compare.sh: posts Codex SSE turns (POST /backend-api/codex/responses).
--   wrk ... -s bench/codex.lua URL -- KIND POOL_KEY
-- KIND:
--   session  small body, `session-id: <uuid>` header (the body also carries the same uuid as
--            prompt_cache_key after `input`, as the Codex CLI sends both)
--   pck      small body, no continuity header, `"prompt_cache_key":"<uuid>"` after `input`
--   large    ~200 KB transcript (many input messages), prompt_cache_key after `input`, no header
-- Requests are formatted once in init() (a fixed set of sessions, cycled), so per request wrk only
-- hands back a prepared string: the script costs wrk next to nothing.
-- done() prints one line `BENCHJSON {...}` with exact counts and latency percentiles (µs).

local kind = "session"
local key = "none"
local reqs = {}
local nreqs = 0
local idx = 0

local function hex(n)
  local t = {}
  for k = 1, n do t[k] = string.format("%x", math.random(0, 15)) end
  return table.concat(t)
end

local function uuid()
  -- version 4 layout; randomness is all that matters here
  return hex(8) .. "-" .. hex(4) .. "-4" .. hex(3) .. "-" ..
         string.format("%x", math.random(8, 11)) .. hex(3) .. "-" .. hex(12)
end

local function message(role, text)
  local ctype = (role == "assistant") and "output_text" or "input_text"
  return '{"type":"message","role":"' .. role .. '","content":[{"type":"' .. ctype ..
         '","text":"' .. text .. '"}]}'
end

-- ~200 KB of input messages: alternating user / assistant turns of ~1 KB each.
local function transcript(target_bytes)
  local items = {}
  local size = 0
  local filler = string.rep("The quick brown fox jumps over the lazy dog while the build runs. ", 15)
  local n = 0
  while size < target_bytes do
    n = n + 1
    local role = (n % 2 == 1) and "user" or "assistant"
    local item = message(role, "turn " .. n .. ": " .. filler)
    items[#items + 1] = item
    size = size + #item + 1
  end
  return "[" .. table.concat(items, ",") .. "]"
end

local function body(input, cache_key)
  -- Field order as the Codex CLI sends it: prompt_cache_key comes after input (and tools).
  return '{"model":"gpt-5.1-codex","instructions":"You are a coding agent. Benchmark turn.",' ..
         '"input":' .. input .. ',' ..
         '"tools":[],"tool_choice":"auto","parallel_tool_calls":false,' ..
         '"reasoning":{"effort":"medium","summary":"auto"},"store":false,"stream":true,' ..
         '"include":["reasoning.encrypted_content"],' ..
         '"prompt_cache_key":"' .. cache_key .. '",' ..
         '"client_metadata":{"bench":"codexmesh"}}'
end

function init(args)
  kind = args[1] or "session"
  key = args[2] or "none"
  math.randomseed(os.time() + math.floor((os.clock() * 1000000) % 1000000))
  local variants = 256
  local input
  if kind == "large" then
    variants = 16
    input = transcript(200 * 1024)
  elseif kind == "session" or kind == "pck" then
    input = "[" .. message("user", "Say ok and nothing else.") .. "]"
  else
    error("unknown kind " .. tostring(kind) .. " (session, pck, large)")
  end
  for v = 1, variants do
    local id = uuid()
    local headers = {}
    for name, value in pairs(wrk.headers) do headers[name] = value end
    headers["Content-Type"] = "application/json"
    headers["Accept"] = "text/event-stream"
    headers["Authorization"] = "Bearer " .. key
    headers["originator"] = "codex_exec"
    if kind == "session" then headers["session-id"] = id end
    reqs[v] = wrk.format("POST", wrk.path, headers, body(input, id))
  end
  nreqs = variants
end

function request()
  idx = idx % nreqs + 1
  return reqs[idx]
end

function done(summary, latency, requests)
  local e = summary.errors
  local p = {}
  for _, q in ipairs({50, 75, 90, 99, 99.9}) do
    p[#p + 1] = string.format('"%s":%d', tostring(q), latency:percentile(q))
  end
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"stdev":%.1f,"min":%d,"max":%d,"percentiles":{%s}}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.stdev, latency.min, latency.max, table.concat(p, ",")))
end
