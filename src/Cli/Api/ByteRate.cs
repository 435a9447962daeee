using System.Globalization;
using System.Text.RegularExpressions;

namespace LiveMigration.Cli.Api;

/// <summary>
/// Sizes and rates as operators write them: <c>100MiB/s</c>, <c>1.5GiB</c>, <c>512k</c>, <c>0</c> (unlimited).
/// Units are binary (K = KiB = 1024), since disks and QEMU's block-job speeds count that way; <c>KB</c>/<c>MB</c>/<c>GB</c> are decimal.
/// </summary>
public static partial class ByteRate
{
    // [0-9], not \d: \d also matches other scripts' digits (Arabic-Indic, fullwidth), which double.Parse then throws on.
    [GeneratedRegex(@"^\s*(?<number>[0-9]+(\.[0-9]+)?)\s*(?<unit>[A-Za-z]*)\s*(/\s*s)?\s*$")]
    private static partial Regex Pattern();

    public static bool TryParse(string? text, out long bytes)
    {
        bytes = 0;
        if (text is null) return false;
        var match = Pattern().Match(text);
        if (!match.Success) return false;
        var multiplier = match.Groups["unit"].Value.ToLowerInvariant() switch
        {
            "" or "b" => 1L,
            "k" or "kib" => 1L << 10,
            "m" or "mib" => 1L << 20,
            "g" or "gib" => 1L << 30,
            "t" or "tib" => 1L << 40,
            "kb" => 1_000L,
            "mb" => 1_000_000L,
            "gb" => 1_000_000_000L,
            "tb" => 1_000_000_000_000L,
            _ => 0L,
        };
        if (multiplier == 0) return false;
        var number = double.Parse(match.Groups["number"].Value, CultureInfo.InvariantCulture);
        var value = number * multiplier;
        if (value > long.MaxValue / 2) return false;
        bytes = (long)Math.Round(value);
        return true;
    }

    public static string Format(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        double value = bytes;
        var unit = 0;
        while (Math.Abs(value) >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return unit == 0 ? $"{bytes} B" : value.ToString("0.0", CultureInfo.InvariantCulture) + " " + units[unit];
    }
}
