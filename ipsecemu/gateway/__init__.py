"""The ipsecemu VPN gateway daemon: IKE (asyncio) + the C data path + a control socket.

``config`` parses the gateway YAML, ``datapath`` installs Child SAs into the C batch loop,
``control`` is the JSON-lines control socket (server and client), ``daemon`` ties them together.
"""
