-- wrk script: every request is 8 GETs written back to back (HTTP/1.1 pipelining, depth 8).
init = function(args)
   local r = {}
   for i = 1, 8 do
      r[i] = wrk.format()
   end
   req = table.concat(r)
end

request = function()
   return req
end
