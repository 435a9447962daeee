using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Steps;

/// <summary>
/// Watches a mirror that is not READY yet and says when it will not converge on its own: a background mirror copies
/// the dirty areas after the guest wrote them, so a guest that dirties nearly as fast as the copy runs (or faster)
/// keeps it from READY for a very long time or forever. Judged from QEMU's own counters over a sliding window: the
/// job's offset grows by what was copied, its length by what the guest newly dirtied. When the guest dirties at least
/// two thirds of the copy rate the remaining work shrinks at a third of the copy rate or less — three times the idle
/// time or worse, the limit — and the mirror should run write-blocking instead (each guest write then reaches
/// both sides, so what is left only shrinks). A guest that dirties as fast as the copy runs or faster (what is left never
/// shrinks) is plain sooner: after a third of the window, as every second spent watching it is a second lost. A
/// write-blocking mirror is never judged so: it converges at its copy rate.
/// A mirror whose remaining work has not shrunk at all for <see cref="StallWindow"/> (a destination that stopped
/// answering, a job that stopped copying) cannot converge: the watch gives up with its numbers, so the step fails and
/// says why instead of waiting for ever. A speed limit alone never makes a mirror stall: QEMU copies a burst of up to
/// <see cref="MirrorBuffer"/> and then waits what the burst took of the limit, so under a limit the window is at least
/// two such waits, and a new speed starts the watch on the stall again.
/// Pure: the caller feeds it one read of the job at a time (on a clock that never jumps, <see cref="Now"/>) and acts on
/// the answer.
/// </summary>
public sealed class MirrorConvergence(TimeSpan window, TimeSpan? stallWindow = null)
{
    /// <summary>How long a mirror is watched before it is judged; long enough that one slow QMP read is not a trend.</summary>
    public static readonly TimeSpan DefaultWindow = TimeSpan.FromSeconds(10);

    /// <summary>How long what is left may stay as large as it was before the mirror is given up: a storage hiccup or a
    /// slow read passes well within it, and an operator watching sees no progress for that long before the verdict.</summary>
    public static readonly TimeSpan DefaultStallWindow = TimeSpan.FromMinutes(2);

    /// <summary>QEMU's mirror buffer (16 requests of 1 MiB in 7.2): the most it copies before it waits out its limit.</summary>
    public const long MirrorBuffer = 16L << 20;

    private static readonly long Started = System.Diagnostics.Stopwatch.GetTimestamp();

    /// <summary>A monotonic clock for the reads: a wall clock set forward (NTP, a host resumed) is no stall.</summary>
    public static DateTimeOffset Now => DateTimeOffset.UnixEpoch + System.Diagnostics.Stopwatch.GetElapsedTime(Started);

    private readonly Queue<Sample> _samples = new();
    /// <summary>The read with the least work left since the job started (or its speed changed): the stall is measured from it.</summary>
    private Sample? _leastLeft;
    private long? _speed;

    public TimeSpan Window => window;
    public TimeSpan StallWindow { get; } = stallWindow ?? DefaultStallWindow;

    /// <summary>
    /// Adds one read of the job and answers what to do: null while it converges well enough (or there is not a window
    /// of reads yet); start it again write-blocking (a background mirror the guest outruns); or give up (nothing left
    /// shrank for the stall window), each with why and the measured rates.
    /// </summary>
    public MirrorVerdict? Observe(DateTimeOffset at, BlockJobInfo job, CopyMode mode)
    {
        if (job.Phase != BlockJobPhase.Running)
        {
            Reset();
            return null;
        }
        // QEMU reports a length only once it has measured what to copy: before that a jump from 0 is no guest's doing.
        if (job.Length == 0) return null;
        var now = new Sample(at, job.Offset, job.Length);
        // A job QEMU restarted (offset or length went back) starts a new window.
        if (_samples.Count > 0 && (now.Offset < _samples.Last().Offset || now.Length < _samples.Last().Length)) Reset();
        if (Stalled(now, job.SpeedBytesPerSecond) is { } stalled) return stalled;
        if (mode == CopyMode.WriteBlocking)
        {
            _samples.Clear();
            _samples.Enqueue(now); // only so that a restarted job is told apart
            return null;
        }
        _samples.Enqueue(now);
        // Keep the newest read that is at least a window old as the first, so the rates span the whole window.
        while (_samples.Count > 2 && at - _samples.ElementAt(1).At >= window) _samples.Dequeue();
        var first = _samples.Peek();
        var span = (at - first.At).TotalSeconds;
        if (span < window.TotalSeconds / 3) return null;

        var copied = (now.Offset - first.Offset) / span;
        var dirtied = (now.Length - first.Length) / span;
        var left = now.Length - now.Offset;
        if (left <= 0 || dirtied <= 0) return null;
        // Nothing copied and nothing dirtied is a stalled job, not a race with the guest: the stall rule judges it.
        var neverShrinks = dirtied >= copied;
        if (!neverShrinks && (span < window.TotalSeconds || dirtied * 3 < copied * 2)) return null;
        var net = copied - dirtied;
        var outlook = net > 0
            ? $"at that pace the last {Mib(left)} would take {left / net:0} s instead of {left / copied:0} s"
            : $"the {Mib(left)} left never shrink at that pace";
        return MirrorVerdict.WriteBlocking($"the background mirror did not converge: over the last {span:0} s it copied {Mib(copied)}/s while the guest " +
               $"dirtied {Mib(dirtied)}/s; {outlook}");
    }

    /// <summary>The give-up verdict once what is left has not shrunk below its least for the stall window, else null.</summary>
    private MirrorVerdict? Stalled(Sample now, long speed)
    {
        // Nothing left (READY is a read away) is no stall.
        if (_leastLeft is not { } least || now.Left < least.Left || now.Left <= 0 || speed != _speed)
        {
            _leastLeft = now;
            _speed = speed;
            return null;
        }
        var span = (now.At - least.At).TotalSeconds;
        // under a limit QEMU rests after each burst for what the burst took of it: two such rests are no stall
        var window = speed > 0 ? TimeSpan.FromSeconds(Math.Max(StallWindow.TotalSeconds, 2.0 * Math.Min(MirrorBuffer, least.Left) / speed)) : StallWindow;
        if (now.At - least.At < window) return null;
        var limit = speed > 0 ? $"its speed limit {Size(speed)}/s" : "no speed limit";
        return MirrorVerdict.GiveUp($"the mirror cannot converge: in the last {span:0} s what is left never went below " +
            $"{Mib(least.Left)} (now {Mib(now.Left)}); it copied {Mib((now.Offset - least.Offset) / span)}/s while the guest dirtied " +
            $"{Mib((now.Length - least.Length) / span)}/s, with {limit}. Check the destination's storage and the VM's host, then migrate again");
    }

    /// <summary>Forgets the reads, e.g. after the job was started again.</summary>
    public void Reset()
    {
        _samples.Clear();
        _leastLeft = null;
        _speed = null;
    }

    private static string Mib(double bytes) => $"{bytes / (1 << 20):0.0} MiB";

    /// <summary>A limit as an operator typed it: 512 B, 64.0 KiB, 8.0 MiB.</summary>
    private static string Size(long bytes) => bytes >= 1 << 20 ? Mib(bytes) : bytes >= 1 << 10 ? $"{bytes / 1024.0:0.0} KiB" : $"{bytes} B";

    private readonly record struct Sample(DateTimeOffset At, long Offset, long Length)
    {
        public long Left => Length - Offset;
    }
}

/// <summary>What a <see cref="MirrorConvergence"/> watch concluded, and why (with the measured rates).</summary>
public sealed record MirrorVerdict(bool GivesUp, string Why)
{
    /// <summary>Start the mirror again write-blocking: it converges then.</summary>
    public static MirrorVerdict WriteBlocking(string why) => new(false, why);

    /// <summary>Stop waiting: the step fails with <see cref="ErrorCodes.MirrorNotConverging"/> and this reason.</summary>
    public static MirrorVerdict GiveUp(string why) => new(true, why);
}
