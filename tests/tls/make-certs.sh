#!/bin/sh
# Regenerates the TLS test data in this directory: ./make-certs.sh (needs the openssl CLI).
# EC P-256 keys; every certificate is valid from 2000-01-01 to 2125-01-01 (backdated so that a
# machine with a wrong clock still accepts them); the CA keys are thrown away.
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/ca.cnf" <<CNF
[ca]
default_ca = ca_section
[ca_section]
database = $tmp/index.txt
new_certs_dir = $tmp
serial = $tmp/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
organizationName = supplied
commonName = supplied
[ca_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server_ext]
subjectAltName = DNS:localhost,IP:127.0.0.1
extendedKeyUsage = serverAuth
[other_ext]
subjectAltName = DNS:other.test
extendedKeyUsage = serverAuth
[client_ext]
extendedKeyUsage = clientAuth
CNF

sign() { # sign NAME CN EXTENSIONS [CA-NAME]: $tmp/NAME.crt and $tmp/NAME.key
    : >"$tmp/index.txt"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/O=ferroloop tests/CN=$2" -keyout "$tmp/$1.key" -out "$tmp/$1.csr" 2>/dev/null
    if [ $# -ge 4 ]; then signer="-cert $tmp/$4.crt -keyfile $tmp/$4.key"; else signer="-selfsign -keyfile $tmp/$1.key"; fi
    # shellcheck disable=SC2086
    openssl ca -batch -notext -config "$tmp/ca.cnf" $signer -rand_serial -extensions "$3" \
        -startdate 20000101000000Z -enddate 21250101000000Z -in "$tmp/$1.csr" -out "$tmp/$1.crt" 2>/dev/null
}

sign ca "ferroloop test CA" ca_ext
sign rogue-ca "ferroloop rogue CA" ca_ext
sign server localhost server_ext ca
sign other other.test other_ext ca
sign client "ferroloop test client" client_ext ca
cp "$tmp/ca.crt" ca.pem
cp "$tmp/rogue-ca.crt" rogue-ca.pem
for name in server other client; do cat "$tmp/$name.crt" "$tmp/$name.key" >"$name.pem"; done
