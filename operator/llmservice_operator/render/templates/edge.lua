-- Rate limits shared by the edge sidecars of one LLMService; loaded by the rendered haproxy.cfg.
--
-- Each sidecar counts a client's accepted requests under a key of its own, <client>@<peer>,
-- so no two sidecars ever write the same stick-table entry. HAProxy's peers protocol copies
-- every entry to every sidecar (peers only ever replace an entry, they never add counts up, so
-- a shared key would lose the counts of concurrent writers). A client's rate is the sum of its
-- entries over the peers in the peers file the sidecar's supervisor keeps (edge.sh): one per
-- serving pod of the service, this one included.
local self_peer = os.getenv("EDGE_PEER") or "local"
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
  return client .. "@" .. self_peer
end)

-- client name -> its accepted requests over the last minute, on every sidecar together
core.register_converters("edge_client_rate", function(client)
  local entries = core.backends["rate_per_client"].stktable
  local sum = 0
  for _, peer in ipairs(peers) do
    local entry = entries:lookup(client .. "@" .. peer)
    if entry then
      sum = sum + entry.gpc0_rate
    end
  end
  return sum
end)
