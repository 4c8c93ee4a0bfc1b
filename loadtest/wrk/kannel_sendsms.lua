-- wrk: Kannel's GET /cgi-bin/sendsms, one recipient per request, a different number each request.
-- Usage: wrk -s kannel_sendsms.lua URL -- '<path and query, everything but to>'
-- Each wrk thread counts through its own block of ten million China Mobile numbers (139
-- prefix), so no number is sent to twice and no per-recipient limit is met.
local threads = 0
local counter = 0
local prefix

function setup(thread)
  thread:set("block", threads)
  threads = threads + 1
end

function init(args)
  prefix = args[1]
  counter = (tonumber(block) or 0) * 10000000
end

function request()
  counter = counter + 1
  return wrk.format("GET", prefix .. string.format("&to=139%08d", counter % 100000000))
end
