// Base64 (RFC 4648, standard alphabet, '=' padding): binary files carried inside JSON text, such
// as the tokenizer a model file embeds in its metadata.
#pragma once
#include <string>

namespace ff {

std::string base64_encode(const std::string& bytes);
// False on a character outside the alphabet or a length that is not a multiple of 4.
bool base64_decode(const std::string& text, std::string& bytes);

}  // namespace ff
