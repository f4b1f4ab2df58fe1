-- Per-client counts of an LLMService's edge sidecars; loaded by the rendered haproxy.cfg.
--
-- Each sidecar counts a client's requests under a key of its own, <client>@<peer>, so no two
-- sidecars ever write the same stick-table entry. HAProxy's peers protocol copies every entry
-- to every sidecar (peers only ever replace an entry, they never add counts up, so a shared
-- key would lose the counts of concurrent writers). A client's rate is the sum of its entries
-- over the peers in the peers file the sidecar's supervisor keeps (edge.sh): one per serving
-- pod of the service, this one included.
local self_peer = os.getenv("EDGE_PEER") or "local"
local own_suffix = "@" .. self_peer
local peers_file = os.getenv("EDGE_PEERS_FILE")
local peers = {}

core.register_init(function()
  if peers_file then
    for line in io.lines(peers_file) do
      local name = line:match("^%s*peer%s+(%S+)")
      if name then
        peers[#peers + 1] = name
      end
    end
  end
  if #peers == 0 then
    peers[1] = self_peer
  end
end)

-- client name -> the key this sidecar counts the client under
core.register_converters("edge_own_key", function(client)
  return client .. own_suffix
end)

-- client name -> its accepted requests over the last minute, on every sidecar together
core.register_converters("edge_client_rate", function(client)
  local entries = core.backends["clients"].stktable
  local sum = 0
  for _, peer in ipairs(peers) do
    local entry = entries:lookup(client .. "@" .. peer)
    if entry then
      sum = sum + entry.gpc0_rate
    end
  end
  return sum
end)

local function label(value)
  return (value:gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub('"', '\\"'))
end

-- /metrics/clients: this sidecar's own counts per client name (never the key itself), in the
-- Prometheus text format; the service's total is the sum over its pods.
core.register_service("edge_clients", "http", function(applet)
  local out = {
    "# HELP llmservice_edge_client_requests_total Requests of each API client (its name in the key map) this sidecar accepted, or refused for the rate limit.",
    "# TYPE llmservice_edge_client_requests_total counter",
  }
  for key, data in pairs(core.backends["clients"].stktable:dump()) do
    if key:sub(-#own_suffix) == own_suffix then
      local client = label(key:sub(1, -#own_suffix - 1))
      out[#out + 1] = string.format('llmservice_edge_client_requests_total{client="%s",outcome="accepted"} %d', client, data.gpc0)
      out[#out + 1] = string.format('llmservice_edge_client_requests_total{client="%s",outcome="limited"} %d', client, data.gpc1)
    end
  end
  local body = table.concat(out, "\n") .. "\n"
  applet:set_status(200)
  applet:add_header("content-type", "text/plain; version=0.0.4")
  applet:add_header("content-length", tostring(#body))
  applet:start_response()
  applet:send(body)
end)
