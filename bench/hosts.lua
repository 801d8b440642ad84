-- wrk script: GET /bench/json with the Host header cycling through h0..h499.example.com, the
-- hosts of the routing scenario's 1,000-route table (the plain gateway ignores the host).
local i = 0
request = function()
  i = (i + 1) % 500
  wrk.headers["Host"] = "h" .. i .. ".example.com"
  return wrk.format("GET", "/bench/json")
end
