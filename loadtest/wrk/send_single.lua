-- wrk: POST /v1/messages with one recipient, a different number each request.
-- Usage: wrk -s send_single.lua URL -- <api key>
local counter = 0
local key

function init(args)
  key = args[1]
  counter = math.random(0, 9999999)
end

function request()
  counter = counter + 1
  local body = string.format('{"to":"139%08d","text":"Your code is %06d"}', counter % 100000000, counter % 1000000)
  return wrk.format("POST", "/v1/messages",
    {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
end
