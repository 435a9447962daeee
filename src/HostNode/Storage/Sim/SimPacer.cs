namespace LiveMigration.HostNode.Storage.Sim;

/// <summary>
/// Turns modelled time into real waits: real time = modelled time × <c>timeScale</c> (0 = no waiting).
/// Waits are taken against a deadline from the start, so many small steps do not add up the timer's
/// rounding, and a <see cref="TimeProvider"/> other than the system's drives them in tests.
/// </summary>
internal sealed class SimPacer
{
    private static readonly TimeSpan SmallestWait = TimeSpan.FromMilliseconds(1);
    private readonly TimeProvider _time;
    private readonly double _timeScale;
    private readonly long _start;

    public SimPacer(TimeProvider time, double timeScale)
    {
        if (timeScale < 0 || double.IsNaN(timeScale))
            throw new ArgumentOutOfRangeException(nameof(timeScale), timeScale, "time scale must be 0 or more");
        _time = time;
        _timeScale = timeScale;
        _start = time.GetTimestamp();
    }

    /// <summary>Waits until <paramref name="modelledSeconds"/> of modelled time have passed since the pacer was made.</summary>
    public async Task WaitUntilAsync(double modelledSeconds, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        if (_timeScale == 0 || double.IsInfinity(modelledSeconds) || modelledSeconds <= 0)
        {
            // let other callers in between steps, as a real copy would
            await Task.Yield();
            return;
        }
        var wait = TimeSpan.FromSeconds(modelledSeconds * _timeScale) - _time.GetElapsedTime(_start);
        if (wait >= SmallestWait) await Task.Delay(wait, _time, ct);
        else await Task.Yield();
    }
}
