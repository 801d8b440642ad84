//! What one signature check costs with the gateway's JWT backend (`jsonwebtoken` on aws-lc):
//! RS256, PS256, ES256 and EdDSA tokens signed with fresh keys, each verified many times the
//! way the gateway verifies an issuer's token (`jsonwebtoken::crypto::verify` with a key made
//! from its JWK components). `make bench` reports the same per request, end to end.
//!
//! `cargo run --release --example verify_cost [ROUNDS]`

use std::time::Instant;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and the public key as an issuer would publish it.
fn keys(alg: Algorithm) -> Result<(EncodingKey, DecodingKey), Box<dyn std::error::Error>> {
    use openssl::pkey::PKey;
    Ok(match alg {
        Algorithm::RS256 | Algorithm::PS256 => {
            let rsa = openssl::rsa::Rsa::generate(2048)?;
            let public =
                DecodingKey::from_rsa_components(&b64(&rsa.n().to_vec()), &b64(&rsa.e().to_vec()))?;
            (
                EncodingKey::from_rsa_der(&rsa.private_key_to_der()?),
                public,
            )
        }
        Algorithm::ES256 => {
            let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)?;
            let ec = openssl::ec::EcKey::generate(&group)?;
            let mut ctx = openssl::bn::BigNumContext::new()?;
            let (mut x, mut y) = (openssl::bn::BigNum::new()?, openssl::bn::BigNum::new()?);
            ec.public_key()
                .affine_coordinates(&group, &mut x, &mut y, &mut ctx)?;
            let public = DecodingKey::from_ec_components(
                &b64(&x.to_vec_padded(32)?),
                &b64(&y.to_vec_padded(32)?),
            )?;
            let pkcs8 = PKey::from_ec_key(ec)?.private_key_to_pkcs8()?;
            (EncodingKey::from_ec_der(&pkcs8), public)
        }
        _ => {
            let ed = PKey::generate_ed25519()?;
            let public = DecodingKey::from_ed_components(&b64(&ed.raw_public_key()?))?;
            (
                EncodingKey::from_ed_der(&ed.private_key_to_pkcs8()?),
                public,
            )
        }
    })
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5000);
    let payload =
        b64(br#"{"iss":"https://idp.example","sub":"42","aud":"gateway","exp":4000000000}"#);
    for alg in [
        Algorithm::RS256,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
    ] {
        let (signing, public) = keys(alg)?;
        let header = b64(format!(r#"{{"alg":"{alg:?}","typ":"at+jwt","kid":"k"}}"#).as_bytes());
        let message = format!("{header}.{payload}");
        let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &signing, alg)?;
        let start = Instant::now();
        for _ in 0..rounds {
            let ok = jsonwebtoken::crypto::verify(&signature, message.as_bytes(), &public, alg)?;
            assert!(ok, "the signature verifies");
        }
        let per = start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
        println!("{alg:?}: {per:.1} us per verification ({rounds} rounds)");
    }
    Ok(())
}
