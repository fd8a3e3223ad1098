"""NDMP wire format: XDR codec compiled from protocol/*.x, record marking, envelopes."""

from .schema import HEADER_SIZE, REPLY, REQUEST, SUPPORTED_VERSIONS, MessageSpec, Protocol, protocol
from .translate import INTERNAL_VERSION, Translator
from .xdr_codec import XdrError, XdrStruct

#: constants of the internal (v4) form, with the NDMP4_ prefix removed: ``C.NO_ERR``
C = protocol(INTERNAL_VERSION).const
#: body classes of the internal (v4) form, with the ndmp4_ prefix removed: ``T.config_get_host_info_reply``
T = protocol(INTERNAL_VERSION).types

__all__ = ["C", "T", "HEADER_SIZE", "INTERNAL_VERSION", "REPLY", "REQUEST", "SUPPORTED_VERSIONS",
           "MessageSpec", "Protocol", "Translator", "XdrError", "XdrStruct", "protocol"]
