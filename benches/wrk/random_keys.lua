-- benches/side_by_side.sh: each request asks for one of COUNT stored objects at random.
-- wrk -s random_keys.lua URL -- PREFIX COUNT   (paths as object_path in summary.lua)
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "summary.lua")

init = function(args)
  prefix, count = args[1], tonumber(args[2])
  -- Each thread its own sequence (LuaJIT seeds every state alike).
  math.randomseed(id * 7919 + os.time())
end

request = function()
  return wrk.format(nil, object_path(prefix, math.random(0, count - 1)))
end
