-- wrk: POST /v1/messages with 100 recipients per request.
-- Usage: wrk -s send_batch.lua URL -- <api key>
local counter = 0
local key

function init(args)
  key = args[1]
  counter = math.random(0, 999999) * 100
end

function request()
  local to = {}
  for i = 1, 100 do
    counter = counter + 1
    to[i] = string.format('"138%08d"', counter % 100000000)
  end
  local body = '{"to":[' .. table.concat(to, ",") .. '],"text":"周末全场八折，凭短信到店领取礼品","class":"marketing"}'
  return wrk.format("POST", "/v1/messages",
    {["Authorization"] = "Bearer " .. key, ["Content-Type"] = "application/json"}, body)
end
