package format

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"

	"golang.org/x/crypto/chacha20poly1305"
)

// Encryption at rest (FORMAT.md "Encryption"): every volume of an encrypted
// lineage has one random data key; its descriptor holds that key wrapped
// (sealed) by the user's key-encryption key (KEK), plus the KEK's
// fingerprint. Record frames are sealed with the data key.
const (
	// KeySize is the size of a KEK and of a data key.
	KeySize = chacha20poly1305.KeySize
	// NonceSize is the XChaCha20-Poly1305 nonce: a writer id (16 bytes)
	// and that writer's frame counter (8 bytes).
	NonceSize = chacha20poly1305.NonceSizeX
	// TagSize is the Poly1305 tag after each sealed frame's ciphertext.
	TagSize = chacha20poly1305.Overhead
	// SealedFrameHeader is u32 length | u32 flags (0) | [24] nonce.
	SealedFrameHeader = 8 + NonceSize
	// SealedFrameSize is the fixed stride of sealed frames, so chunk i of
	// an encrypted record is still at a computed position (one ranged GET).
	SealedFrameSize = SealedFrameHeader + ChunkSize + TagSize

	// CipherXChaCha20Poly1305 is the only cipher a descriptor may name.
	CipherXChaCha20Poly1305 = "xchacha20poly1305"

	fingerprintLabel = "urldisk key fingerprint v1"
	wrapLabel        = "urldisk data key v1"
	frameLabel       = "urldisk frame v1"
)

var (
	// ErrWrongKey: the key given is not the one the volume's data key is
	// wrapped with (the fingerprints differ). errors.As a *WrongKeyError
	// for both fingerprints.
	ErrWrongKey = errors.New("wrong key")
	// ErrNoKey: the volume is encrypted and no key was given.
	ErrNoKey = errors.New("volume is encrypted and no key was given")
	// ErrBadKey: key material that is not a 32-byte key in hex, base64
	// or raw form.
	ErrBadKey = errors.New("bad key")
)

// WrongKeyError is the ErrWrongKey of an unwrap: it names the
// fingerprints (never key material).
type WrongKeyError struct {
	Want, Got string // the descriptor's KEK fingerprint, the given key's
}

func (e *WrongKeyError) Error() string {
	return fmt.Sprintf("wrong key: the volume's data key is wrapped by the key with fingerprint %s, the key given has fingerprint %s", e.Want, e.Got)
}

// Is makes errors.Is(err, ErrWrongKey) true.
func (e *WrongKeyError) Is(target error) bool { return target == ErrWrongKey }

// KEK is a user's key-encryption key. Its String and format verbs print
// only its fingerprint, so it cannot leak into a log line by accident.
type KEK struct{ k [KeySize]byte }

// ParseKEK accepts 32 raw bytes, or 64 hex digits, or the base64 (standard
// or URL alphabet, padded or not) of 32 bytes, with surrounding whitespace
// (a trailing newline of a key file or command) ignored for the text forms.
func ParseKEK(b []byte) (*KEK, error) {
	var k KEK
	if len(b) == KeySize {
		copy(k.k[:], b)
		return &k, nil
	}
	s := string(trimSpace(b))
	if len(s) == 2*KeySize {
		if n, err := hex.Decode(k.k[:], []byte(s)); err == nil && n == KeySize {
			return &k, nil
		}
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.RawURLEncoding} {
		if d, err := enc.DecodeString(s); err == nil && len(d) == KeySize {
			copy(k.k[:], d)
			return &k, nil
		}
	}
	// The message says what was wrong without echoing the material.
	return nil, fmt.Errorf("%w: want 32 bytes: raw, 64 hex digits or base64 (got %d bytes that are none of these)", ErrBadKey, len(b))
}

func trimSpace(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\n' || b[0] == '\r' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\n' || b[len(b)-1] == '\r' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// Fingerprint is the first 8 bytes of HMAC-SHA256(kek, a fixed label), in
// hex: it tells keys apart in error messages and in the descriptor without
// revealing anything about the key.
func (k *KEK) Fingerprint() string {
	m := hmac.New(sha256.New, k.k[:])
	m.Write([]byte(fingerprintLabel))
	return hex.EncodeToString(m.Sum(nil)[:8])
}

// String prints the fingerprint only.
func (k *KEK) String() string { return "key " + k.Fingerprint() }

// GoString prints the fingerprint only (%#v).
func (k *KEK) GoString() string { return k.String() }

// EncryptionDesc is the "encryption" object of a volume descriptor.
type EncryptionDesc struct {
	Cipher string `json:"cipher"`
	// KeyFingerprint is KEK.Fingerprint of the key WrappedKey is sealed by.
	KeyFingerprint string `json:"key_fingerprint"`
	// WrappedKey is base64(nonce (24) | XChaCha20-Poly1305 seal of the
	// data key (32 + 16)) under the KEK, additional data "urldisk data key v1".
	WrappedKey string `json:"wrapped_key"`
}

// NewEncryption makes a random data key wrapped by kek.
func NewEncryption(kek *KEK) (*EncryptionDesc, error) {
	var dk [KeySize]byte
	if _, err := rand.Read(dk[:]); err != nil {
		return nil, fmt.Errorf("generate data key: %w", err)
	}
	return wrap(kek, dk[:])
}

func wrap(kek *KEK, dk []byte) (*EncryptionDesc, error) {
	aead, err := chacha20poly1305.NewX(kek.k[:])
	if err != nil {
		return nil, fmt.Errorf("wrap data key: %w", err)
	}
	nonce := make([]byte, NonceSize, NonceSize+KeySize+TagSize)
	if _, err := rand.Read(nonce); err != nil {
		return nil, fmt.Errorf("wrap data key: %w", err)
	}
	sealed := aead.Seal(nonce, nonce, dk, []byte(wrapLabel))
	return &EncryptionDesc{Cipher: CipherXChaCha20Poly1305, KeyFingerprint: kek.Fingerprint(), WrappedKey: base64.StdEncoding.EncodeToString(sealed)}, nil
}

// Rewrap returns e's data key wrapped by newKEK (old must unwrap it): the
// data key, and so every record, stays the same.
func (e *EncryptionDesc) Rewrap(old, newKEK *KEK) (*EncryptionDesc, error) {
	dk, err := e.unwrap(old)
	if err != nil {
		return nil, err
	}
	return wrap(newKEK, dk)
}

// Validate checks the fields' shapes.
func (e *EncryptionDesc) Validate() error {
	if e.Cipher != CipherXChaCha20Poly1305 {
		return corruptf("volume descriptor: cipher %q not supported (this urldisk knows %s)", e.Cipher, CipherXChaCha20Poly1305)
	}
	if len(e.KeyFingerprint) != 16 {
		return corruptf("volume descriptor: bad key fingerprint")
	}
	if b, err := base64.StdEncoding.DecodeString(e.WrappedKey); err != nil || len(b) != NonceSize+KeySize+TagSize {
		return corruptf("volume descriptor: bad wrapped key")
	}
	return nil
}

func (e *EncryptionDesc) unwrap(kek *KEK) ([]byte, error) {
	if kek == nil {
		return nil, ErrNoKey
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	if got := kek.Fingerprint(); got != e.KeyFingerprint {
		return nil, &WrongKeyError{Want: e.KeyFingerprint, Got: got}
	}
	aead, err := chacha20poly1305.NewX(kek.k[:])
	if err != nil {
		return nil, fmt.Errorf("unwrap data key: %w", err)
	}
	b, _ := base64.StdEncoding.DecodeString(e.WrappedKey)
	dk, err := aead.Open(nil, b[:NonceSize], b[NonceSize:], []byte(wrapLabel))
	if err != nil {
		// The fingerprint matched, so the key is right and the descriptor
		// was altered.
		return nil, corruptf("volume descriptor: wrapped data key does not open with the key of its fingerprint %s", e.KeyFingerprint)
	}
	return dk, nil
}

// DataKey is an unwrapped data key: it seals and opens record frames.
type DataKey struct{ aead cipher.AEAD }

// Unwrap opens e's data key with kek: ErrNoKey without one, a
// *WrongKeyError if kek is another key than the one e names.
func (e *EncryptionDesc) Unwrap(kek *KEK) (*DataKey, error) {
	dk, err := e.unwrap(kek)
	if err != nil {
		return nil, err
	}
	aead, err := chacha20poly1305.NewX(dk)
	clear(dk)
	if err != nil {
		return nil, fmt.Errorf("unwrap data key: %w", err)
	}
	return &DataKey{aead: aead}, nil
}

// frameAD is the additional data that binds a sealed frame to where it
// belongs: the volume whose log holds the record, the record's seq, the
// chunk index, and the frame's header fields (length, flags).
func frameAD(buf *[64 + maxIDLen]byte, vol string, seq, chunk uint64, n, flags uint32) []byte {
	ad := append(buf[:0], frameLabel...)
	ad = binary.LittleEndian.AppendUint32(ad, n)
	ad = binary.LittleEndian.AppendUint32(ad, flags)
	ad = binary.LittleEndian.AppendUint64(ad, seq)
	ad = binary.LittleEndian.AppendUint64(ad, chunk)
	return append(ad, vol...)
}

// Nonces hands out the frame nonces of one writer: its random per-attach
// WriterID followed by a counter that only goes up, so no two frames sealed
// under a lineage's data key share a nonce (writers differ in their id,
// one writer's frames in the counter). Safe for concurrent use.
type Nonces struct {
	writer WriterID
	ctr    atomic.Uint64
}

// NewNonces returns the nonce source of writer w.
func NewNonces(w WriterID) *Nonces { return &Nonces{writer: w} }

// Next returns a nonce never returned before by this source.
func (s *Nonces) Next() (n [NonceSize]byte) {
	copy(n[:], s.writer[:])
	binary.LittleEndian.PutUint64(n[16:], s.ctr.Add(1))
	return n
}

// SealFrame appends to dst chunk's sealed frame: header, ciphertext, tag.
func (k *DataKey) SealFrame(dst []byte, nonce [NonceSize]byte, vol string, seq, chunk uint64, plain []byte) []byte {
	var adBuf [64 + maxIDLen]byte
	ad := frameAD(&adBuf, vol, seq, chunk, uint32(len(plain)), 0)
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(plain)))
	dst = binary.LittleEndian.AppendUint32(dst, 0)
	dst = append(dst, nonce[:]...)
	return k.aead.Seal(dst, nonce[:], plain, ad)
}

// OpenFrame authenticates and decrypts, in place, the sealed frame of chunk
// of record seq of volume vol at the start of frame (which may extend past
// it) and returns the plaintext (a slice of frame). want is the expected
// plaintext length, or -1. Any altered bit, or a frame sealed for another
// volume, record or chunk, fails with ErrCorrupt.
func (k *DataKey) OpenFrame(frame []byte, vol string, seq, chunk uint64, want int) ([]byte, error) {
	if len(frame) < SealedFrameHeader+TagSize {
		return nil, corruptf("sealed frame truncated: %d bytes", len(frame))
	}
	n := binary.LittleEndian.Uint32(frame)
	flags := binary.LittleEndian.Uint32(frame[4:])
	if n == 0 || n > ChunkSize || int(n) > len(frame)-SealedFrameHeader-TagSize {
		return nil, corruptf("sealed frame length %d invalid (have %d bytes)", n, len(frame)-SealedFrameHeader-TagSize)
	}
	if flags != 0 {
		return nil, corruptf("sealed frame flags %#x not supported", flags)
	}
	if want >= 0 && int(n) != want {
		return nil, corruptf("sealed frame length %d, expected %d", n, want)
	}
	if len(vol) > maxIDLen {
		return nil, corruptf("bad volume id length")
	}
	var adBuf [64 + maxIDLen]byte
	ad := frameAD(&adBuf, vol, seq, chunk, n, flags)
	ct := frame[SealedFrameHeader : SealedFrameHeader+int(n)+TagSize]
	plain, err := k.aead.Open(ct[:0], frame[8:SealedFrameHeader], ct, ad)
	if err != nil {
		return nil, corruptf("sealed frame of chunk %d of record %d of volume %s does not authenticate (altered, or not this volume's frame at this position)", chunk, seq, vol)
	}
	return plain, nil
}

// SealedDataSectionSize returns the encoded size of n logical data bytes
// in sealed frames.
func SealedDataSectionSize(n uint64) uint64 {
	return n + (n+ChunkSize-1)/ChunkSize*(SealedFrameHeader+TagSize)
}

// SealedFramePos returns the byte position of chunk i's sealed frame.
func SealedFramePos(chunk uint64) int64 { return int64(chunk) * SealedFrameSize }

// SealEncrypted returns the record object of the builder's data with every
// frame sealed by k (nonces from ns), followed by r's trailer (r.Sealed and
// r.DataLen are set). The builder keeps its plaintext and is not modified,
// so a record moved to another slot is sealed again from it (the frames'
// additional data names the seq).
func (b *Builder) SealEncrypted(r *Record, k *DataKey, ns *Nonces) ([]byte, error) {
	r.DataLen, r.Sealed = b.dataLen, true
	obj := make([]byte, 0, SealedDataSectionSize(b.dataLen)+4096)
	for i := uint64(0); i*ChunkSize < b.dataLen; i++ {
		obj = k.SealFrame(obj, ns.Next(), r.Volume, r.Seq, i, b.Chunk(i))
	}
	return AppendTrailer(obj, r)
}
