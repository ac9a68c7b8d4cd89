-- wrk script: shapes the request from environment variables, checks every response, and prints
-- one JSON summary line.
--   WRK_METHOD         request method (default GET)
--   WRK_BODY_SIZE      bytes of request body ("x" repeated; wrk adds Content-Length)
--   WRK_CLOSE          "1" sends "Connection: close" (RFC 9112 section 9.6): one request per
--                      connection
--   WRK_EXPECT_STATUS  the status every response must have; unset: no response is checked
--   WRK_EXPECT_LENGTH  the body length every response must have (wrk hands the body over
--                      without chunked framing); unset: only the status is checked
-- wrk counts status >= 400 in errors.status itself, but never looks at a body: a server that
-- answered fast with the wrong bytes (an empty body, a 3xx) would count as fast. Checking costs
-- wrk a Lua call per response (and a copy of its body); measured against a server faster than
-- any measured here, wrk still drives it at the same rate (perf/README.md), so the check does
-- not cap the figures. A response that fails the check counts in "mismatches", and the harness
-- flags the round as it does an error.

local method = os.getenv("WRK_METHOD")
local body_size = tonumber(os.getenv("WRK_BODY_SIZE") or "0") or 0
local expect_status = tonumber(os.getenv("WRK_EXPECT_STATUS") or "")
local expect_length = tonumber(os.getenv("WRK_EXPECT_LENGTH") or "")
if method and method ~= "" then
   wrk.method = method
end
if body_size > 0 then
   wrk.body = string.rep("x", body_size)
   wrk.headers["Content-Type"] = "application/octet-stream"
end
if os.getenv("WRK_CLOSE") == "1" then
   wrk.headers["Connection"] = "close"
end

-- Per thread (each wrk thread runs this script in its own Lua state): globals, so that done()
-- can read them with thread:get().
checked = 0
mismatches = 0
first_status = -1
first_length = -1

if expect_status then
   -- Only defined when checking: wrk hands responses to Lua only if `response` exists.
   response = function(status, headers, body)
      checked = checked + 1
      if status ~= expect_status or (expect_length and #body ~= expect_length) then
         mismatches = mismatches + 1
         if first_status < 0 then
            first_status = status
            first_length = #body
         end
      end
   end
end

local threads = {}
setup = function(thread)
   table.insert(threads, thread)
end

local function check_json()
   if not expect_status then
      return ""
   end
   local c, m, fs, fl = 0, 0, -1, -1
   for _, t in ipairs(threads) do
      c = c + t:get("checked")
      m = m + t:get("mismatches")
      if fs < 0 and t:get("first_status") >= 0 then
         fs, fl = t:get("first_status"), t:get("first_length")
      end
   end
   return string.format(
      ',"check":{"status":%d,"length":%d,"responses":%d,"mismatches":%d,' ..
      '"first_status":%d,"first_length":%d}',
      expect_status, expect_length or -1, c, m, fs, fl)
end

done = function(summary, latency, requests)
   local e = summary.errors
   local parts = {}
   for _, p in ipairs({50, 75, 90, 99, 99.9}) do
      parts[#parts + 1] = string.format('"%s":%.1f', tostring(p), latency:percentile(p))
   end
   io.write(string.format(
      'WRK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"mean":%.1f,"stdev":%.1f,"max":%.1f,"percentiles":{%s}}%s}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.mean, latency.stdev, latency.max, table.concat(parts, ","), check_json()))
end
