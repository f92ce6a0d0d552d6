"""strongSwan 5.9 (charon + kernel-libipsec) as a peer: the daemon in a netns (charon.py), its vici
control socket (vici.py), the connection model (conn.py) and the level-4 key-log parser that
feeds Wireshark key files (keylog.py).  The test/bench topologies built around it live in
:mod:`ipsecemu.lab.harness`.
"""
