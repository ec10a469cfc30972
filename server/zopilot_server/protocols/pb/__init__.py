"""Generated stubs of the third-party protocols (scripts/gen_proto.py; never edit them).

They register into ``POOL``, a descriptor pool of their own, not protobuf's default
pool: a process that also imports tritonclient's or a TGIS client's generated modules
(same message names, other files) would otherwise fail at import.
"""

from google.protobuf import descriptor_pool

POOL = descriptor_pool.DescriptorPool()
