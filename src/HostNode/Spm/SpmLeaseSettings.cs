using System.Globalization;
using Akka.Actor.Setup;
using Akka.Hosting;
using Akka.Hosting.Coordination;

namespace LiveMigration.HostNode.Spm;

/// <summary>
/// Where the pool's SPM lease lives (DESIGN §7a) and how long it lasts: a file on the shared storage every SPM-capable
/// host of the pool mounts at the same path (beside the domains), so all of them read and write the same record.
/// </summary>
/// <param name="Period">How long a holder counts as alive after its last renewal (renewed every third of it). Longer than
/// any pause a live holder may take (GC, a loaded machine); a new SPM waits this plus the margin after the last renewal.</param>
/// <param name="Margin">Added to the period before a takeover, and waited after writing a new generation before reading it back.</param>
public sealed record SpmLeaseSettings(string Path, TimeSpan Period, TimeSpan Margin)
{
    /// <summary>The HOCON block the SPM singleton's <c>use-lease</c> names.</summary>
    public const string ConfigPath = "lsm.spm-lease";

    public static readonly TimeSpan DefaultPeriod = TimeSpan.FromSeconds(30);
    public static readonly TimeSpan DefaultMargin = TimeSpan.FromSeconds(5);

    /// <summary>"30", "30s", "1.5s" or "500ms": a positive duration; seconds when no unit is given.</summary>
    public static TimeSpan ParseDuration(string text, string what)
    {
        var trimmed = text.Trim();
        var (number, scale) = trimmed.EndsWith("ms", StringComparison.Ordinal) ? (trimmed[..^2], 0.001)
            : trimmed.EndsWith('s') ? (trimmed[..^1], 1.0)
            : (trimmed, 1.0);
        if (!double.TryParse(number, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value) || value <= 0 || value * scale > 3600)
            throw new ArgumentException($"{what} '{text}' is not a duration like 30s or 500ms (more than 0, at most an hour)");
        return TimeSpan.FromSeconds(value * scale);
    }
}

/// <summary>
/// The SPM lease as Akka.Hosting's lease option: its HOCON block (<see cref="SpmLeaseSettings.ConfigPath"/>) loads
/// <see cref="FileLease"/> with the settings' file and timings. Tests' fast timings (prepended HOCON) may shorten them.
/// </summary>
public sealed class FileLeaseOption(SpmLeaseSettings settings) : LeaseOptionBase
{
    public SpmLeaseSettings Settings => settings;
    public override string ConfigPath => SpmLeaseSettings.ConfigPath;
    public override Type Class => typeof(FileLease);

    public override void Apply(AkkaConfigurationBuilder builder, Setup? setup = null)
    {
        static string Hocon(TimeSpan t) => $"{(long)t.TotalMilliseconds}ms";
        // An acquisition watches the record for up to period + margin, then waits the margin again: the timeout covers both.
        var operationTimeout = settings.Period * 2 + settings.Margin * 2;
        builder.AddHocon($$"""
            {{ConfigPath}} {
              lease-class = "{{Class.FullName}}, {{Class.Assembly.GetName().Name}}"
              path = "{{settings.Path.Replace("\\", "\\\\").Replace("\"", "\\\"")}}"
              heartbeat-timeout = {{Hocon(settings.Period)}}
              heartbeat-interval = {{Hocon(settings.Period / 3)}}
              lease-operation-timeout = {{Hocon(operationTimeout)}}
              margin = {{Hocon(settings.Margin)}}
            }
            # A node that stops waits (FileLease's task in this phase) for its lease's release, which waits for the SPM's
            # copies to be killed and reaped: a minute, not Akka's 5 s, before the process exits regardless.
            akka.coordinated-shutdown.phases.before-actor-system-terminate.timeout = 60s
            """, HoconAddMode.Append);
    }
}
