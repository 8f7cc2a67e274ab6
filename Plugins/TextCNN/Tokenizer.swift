// Text to token ids for the text encoder, with no vocabulary to build or
// store: every lower-cased word and every character trigram of "<word>" is
// hashed (FNV-1a) into one of `buckets` rows, so a word never seen before
// still lands on the trigrams it shares with known words (the subword idea
// of fastText, Bojanowski et al. 2017).
//
// A text becomes a sequence of word positions; each position carries its
// word's bucket and its trigrams' buckets. Only the first `maxWords` words
// are read (titles, genres and tags come first in item texts).

struct TokenizedText: Equatable {
    /// For each word position, where its ids start in `ids` (and one more
    /// entry at the end).
    var starts: [Int32] = [0]
    var ids: [Int32] = []
    /// Words in the whole text, also past `maxWords`.
    var wordCount = 0
    var positions: Int { starts.count - 1 }

    func ids(at p: Int) -> ArraySlice<Int32> { ids[Int(starts[p]) ..< Int(starts[p + 1])] }
}

struct Tokenizer {
    let buckets: Int
    let maxWords: Int

    func tokenize(_ text: String) -> TokenizedText {
        var out = TokenizedText()
        var word: [UInt8] = []
        func flush() {
            if !word.isEmpty { out.wordCount += 1 }
            guard !word.isEmpty, out.positions < maxWords else { word.removeAll(keepingCapacity: true); return }
            out.ids.append(bucket(word, salt: 1))
            let padded = [UInt8(ascii: "<")] + word + [UInt8(ascii: ">")]
            if padded.count >= 3 {
                for k in 0...(padded.count - 3) { out.ids.append(bucket(padded[k..<(k + 3)], salt: 3)) }
            }
            out.starts.append(Int32(out.ids.count))
            word.removeAll(keepingCapacity: true)
        }
        for scalar in text.unicodeScalars {
            if scalar.properties.isAlphabetic || scalar.properties.numericType != nil {
                for b in String(scalar).lowercased().utf8 { word.append(b) }
            } else {
                flush()
            }
        }
        flush()
        return out
    }

    /// FNV-1a of the bytes, salted so a word and a trigram with the same
    /// bytes land in different rows.
    private func bucket(_ bytes: some Sequence<UInt8>, salt: UInt64) -> Int32 {
        var h: UInt64 = 0xCBF2_9CE4_8422_2325 ^ salt
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        return Int32(h % UInt64(buckets))
    }
}
