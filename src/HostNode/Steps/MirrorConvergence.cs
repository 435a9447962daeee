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
/// write-blocking mirror is never judged: it converges at its copy rate. Pure: the caller feeds it one read of the job
/// at a time and acts on the answer.
/// </summary>
public sealed class MirrorConvergence(TimeSpan window)
{
    /// <summary>How long a mirror is watched before it is judged; long enough that one slow QMP read is not a trend.</summary>
    public static readonly TimeSpan DefaultWindow = TimeSpan.FromSeconds(10);

    private readonly Queue<Sample> _samples = new();

    public TimeSpan Window => window;

    /// <summary>
    /// Adds one read of the job and answers whether the mirror should switch to write-blocking: null while it
    /// converges well enough (or there is not a window of reads yet), else why, with the measured rates.
    /// </summary>
    public string? Observe(DateTimeOffset at, BlockJobInfo job, CopyMode mode)
    {
        if (mode == CopyMode.WriteBlocking || job.Phase != BlockJobPhase.Running)
        {
            _samples.Clear();
            return null;
        }
        // QEMU reports a length only once it has measured what to copy: before that a jump from 0 is no guest's doing.
        if (job.Length == 0) return null;
        var now = new Sample(at, job.Offset, job.Length);
        // A job QEMU restarted (offset or length went back) starts a new window.
        if (_samples.Count > 0 && (now.Offset < _samples.Last().Offset || now.Length < _samples.Last().Length)) _samples.Clear();
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
        // Nothing copied and nothing dirtied is a stalled job, not a race with the guest: not this watch's to judge.
        var neverShrinks = dirtied >= copied;
        if (!neverShrinks && (span < window.TotalSeconds || dirtied * 3 < copied * 2)) return null;
        var net = copied - dirtied;
        var outlook = net > 0
            ? $"at that pace the last {Mib(left)} would take {left / net:0} s instead of {left / copied:0} s"
            : $"the {Mib(left)} left never shrink at that pace";
        return $"the background mirror did not converge: over the last {span:0} s it copied {Mib(copied)}/s while the guest " +
               $"dirtied {Mib(dirtied)}/s; {outlook}";
    }

    /// <summary>Forgets the reads, e.g. after the job was started again.</summary>
    public void Reset() => _samples.Clear();

    private static string Mib(double bytes) => $"{bytes / (1 << 20):0.0} MiB";

    private readonly record struct Sample(DateTimeOffset At, long Offset, long Length);
}
