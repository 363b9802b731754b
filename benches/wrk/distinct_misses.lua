-- benches/side_by_side.sh: a key never asked for before on every request, so no server can
-- answer a miss from a cache of earlier misses.
-- wrk -s distinct_misses.lua URL -- TAG   (TAG: unique per wrk run)
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

init = function(args)
  tag, n = args[1], 0
end

request = function()
  n = n + 1
  return wrk.format(nil, string.format("/miss/%s/%d/%d.bin", tag, id, n))
end
