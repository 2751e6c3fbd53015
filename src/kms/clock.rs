//! The few timestamps the KMS code writes and reads: SigV4's `X-Amz-Date`, the audit log's
//! `eventTime`, and AWS JSON's epoch seconds. The calendar work is the `time` crate's
//! (already in the tree through `aws-sigv4`); this module only names the formats.
//! UTC only, to the whole second.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::{Date, OffsetDateTime, PrimitiveDateTime};

/// SigV4's `X-Amz-Date`: ISO 8601 basic format, always UTC.
static AMZ_DATE: LazyLock<Vec<BorrowedFormatItem<'static>>> = LazyLock::new(|| {
    time::format_description::parse_borrowed::<2>("[year][month][day]T[hour][minute][second]Z")
        .expect("a valid format description")
});

/// Seconds since the Unix epoch, as AWS JSON 1.1 timestamps are sent.
pub fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `t` in UTC, cut to the whole second; times before 1970 read as 1970 and times past
/// the year 9999 (which the formats cannot show) as its last second.
fn utc_second(t: SystemTime) -> OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    i64::try_from(secs)
        .ok()
        .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .unwrap_or_else(|| {
            let last = Date::MAX.with_hms(23, 59, 59).expect("a valid time of day");
            last.assume_utc()
        })
}

/// `2023-11-14T22:13:20Z`, CloudTrail's `eventTime` format.
pub fn rfc3339(t: SystemTime) -> String {
    utc_second(t)
        .format(&Rfc3339)
        .expect("a UTC time in years 1970..=9999 formats")
}

/// `20231114T221320Z`, SigV4's `X-Amz-Date` format.
pub fn amz_date(t: SystemTime) -> String {
    utc_second(t)
        .format(&AMZ_DATE)
        .expect("a UTC time in years 1970..=9999 formats")
}

/// Parses SigV4's `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`); `None` for anything else, or a time
/// before 1970.
pub fn parse_amz_date(s: &str) -> Option<SystemTime> {
    let t = PrimitiveDateTime::parse(s, &AMZ_DATE).ok()?.assume_utc();
    u64::try_from(t.unix_timestamp())
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_known_instants() {
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20Z");
        assert_eq!(amz_date(t), "20231114T221320Z");
        assert_eq!(parse_amz_date("20231114T221320Z"), Some(t));
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let leap = parse_amz_date("20240229T000000Z").unwrap();
        assert_eq!(amz_date(leap), "20240229T000000Z");
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(rfc3339(far), "9999-12-31T23:59:59Z");
        // Fractions of a second are cut, not rounded.
        assert_eq!(
            rfc3339(t + Duration::from_millis(999)),
            "2023-11-14T22:13:20Z"
        );
        for bad in [
            "",
            "20231114 221320Z",
            "2023111XT221320Z",
            "20231314T221320Z",
            "20230229T000000Z",
            "2023-11-14T22:13:20Z",
            "20231114T221320",
            "19691231T235959Z",
        ] {
            assert_eq!(parse_amz_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn sweep_round_trips() {
        for day in (0..40_000i64).step_by(37) {
            let t = UNIX_EPOCH + Duration::from_secs(day as u64 * 86400 + 3723);
            assert_eq!(parse_amz_date(&amz_date(t)), Some(t));
        }
    }
}
