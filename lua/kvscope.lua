-- lua/kvscope.lua: the Lua side of the kvscope module.
--
-- The C side (src/script/api.c) builds the module table from its API table
-- and passes it here; this file adds the helpers that are simpler in Lua
-- (JSON, CSV, plain-text tables) and returns the module. It runs in each
-- plugin's sandbox like any plugin code. The rows marked "lua/kvscope.lua"
-- in doc/lua-api.md are exactly the functions defined here: the check at
-- the end refuses a mismatch.
local M = ...

local function json_str(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local map = { ['"'] = '\\"', ['\\'] = '\\\\', ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
    return map[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

local function json(v, depth)
  depth = depth or 0
  if depth > 64 then error("kvscope.json: nesting deeper than 64 (a cycle?)", 2) end
  local t = type(v)
  if v == nil then return "null"
  elseif t == "boolean" then return tostring(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if math.type(v) == "integer" then return tostring(v) end
    return string.format("%.17g", v)
  elseif t == "string" then return json_str(v)
  elseif t == "table" then
    local n = #v
    local out = {}
    if n > 0 or next(v) == nil then
      for i = 1, n do out[i] = json(v[i], depth + 1) end
      return "[" .. table.concat(out, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do
      if type(k) ~= "string" then
        error("kvscope.json: table keys must be all strings or an array, got " .. type(k), 2)
      end
      keys[#keys + 1] = k
    end
    table.sort(keys)
    for i, k in ipairs(keys) do out[i] = json_str(k) .. ":" .. json(v[k], depth + 1) end
    return "{" .. table.concat(out, ",") .. "}"
  end
  error("kvscope.json: cannot encode a " .. t, 2)
end

function M.json(v) return json(v) end

function M.csv(row)
  local out = {}
  for i = 1, #row do
    local s = row[i]
    if s == nil then s = "" end
    if type(s) == "number" and math.type(s) == "float" then s = string.format("%.6g", s) end
    s = tostring(s)
    if s:find('[,"\n\r]') then s = '"' .. s:gsub('"', '""') .. '"' end
    out[i] = s
  end
  return table.concat(out, ",")
end

function M.table(header, rows)
  local width = {}
  local function cell(v)
    if type(v) == "number" and math.type(v) == "float" then return string.format("%.3f", v) end
    return tostring(v == nil and "" or v)
  end
  local all = { header }
  for _, r in ipairs(rows) do all[#all + 1] = r end
  for _, r in ipairs(all) do
    for i = 1, #header do width[i] = math.max(width[i] or 0, utf8.len(cell(r[i])) or #cell(r[i])) end
  end
  local lines = {}
  for k, r in ipairs(all) do
    local parts = {}
    for i = 1, #header do
      local s = cell(r[i])
      parts[i] = s .. string.rep(" ", width[i] - (utf8.len(s) or #s))
    end
    lines[#lines + 1] = table.concat(parts, "  "):gsub("%s+$", "")
    if k == 1 then
      local rule = {}
      for i = 1, #header do rule[i] = string.rep("-", width[i]) end
      lines[#lines + 1] = table.concat(rule, "  ")
    end
  end
  return table.concat(lines, "\n")
end

-- Parse a script's "--name [value]" arguments. options is a list of
-- { "--name", fn } (fn gets the value) and { "--flag", fn, flag = true }
-- (fn gets nothing), each with an optional value = "PLACEHOLDER" and
-- help = "one line". --help (or -h) prints the usage, the options and the
-- text about, then ends the script with status 0; an unknown argument or a
-- missing value ends it with status 2 and one line naming the script and
-- what was expected (in a plugin they raise that line as an error).
function M.getopt(script, args, options, about)
  local by, names = {}, {}
  for _, o in ipairs(options) do
    by[o[1]] = o
    names[#names + 1] = o[1]
  end
  local function usage()
    local lines, rows, width = { "usage: kvscope run " .. script .. " [options]" }, {}, 0
    if about then lines[#lines + 1] = "\n" .. about:gsub("%s+$", "") end
    for _, o in ipairs(options) do
      local left = o[1] .. (o.flag and "" or " " .. (o.value or "VALUE"))
      rows[#rows + 1] = { left, o.help or "" }
      width = math.max(width, #left)
    end
    rows[#rows + 1] = { "--help", "print this help and exit" }
    lines[#lines + 1] = "\noptions:"
    for _, r in ipairs(rows) do
      lines[#lines + 1] = ("  %-" .. width .. "s  %s"):format(r[1], r[2]):gsub("%s+$", "")
    end
    return table.concat(lines, "\n")
  end
  local i = 1
  while i <= #args do
    local a = args[i]
    local o = by[a]
    if o == nil and (a == "--help" or a == "-h") then
      print(usage())
      M.exit(0)
    end
    if o == nil then
      M.exit(2, script .. ": unknown argument '" .. tostring(a) .. "' (expected " ..
             table.concat(names, ", ") .. "; --help describes them)")
    end
    if o.flag then
      o[2]()
    else
      i = i + 1
      if args[i] == nil then
        M.exit(2, script .. ": " .. a .. " needs a value (" .. (o.value or "VALUE") .. ")")
      end
      o[2](args[i])
    end
    i = i + 1
  end
end

for name in pairs(M._lua_side) do
  if type(M[name]) ~= "function" then error("lua/kvscope.lua does not define " .. name) end
end
M._lua_side = nil
return M
