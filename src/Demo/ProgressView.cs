using System.Diagnostics;
using LiveMigration.HostNode.Migration;

namespace LiveMigration.Demo;

/// <summary>
/// Shows a move's progress: one line per step, a live bar on a terminal, a line a second otherwise.
/// It is called inline by the mover (synchronous <see cref="IProgress{T}"/>), so hooks run at the exact step.
/// </summary>
internal sealed class ProgressView(Action<MoveProgress>? hook = null) : IProgress<MoveProgress>
{
    private readonly bool _live = !Console.IsOutputRedirected;
    private readonly Stopwatch _sinceLine = Stopwatch.StartNew();
    private string? _step;
    private bool _barShown;

    public void Report(MoveProgress value)
    {
        hook?.Invoke(value);
        lock (this)
        {
            var stepChanged = value.Step != _step;
            if (stepChanged)
            {
                EndBar();
                _step = value.Step;
                Console.WriteLine($"    {value.Step}");
            }
            if (value.Total <= 1 || value.Step is "completed") return;
            var line = $"      {Bar(value.Done, value.Total)} {Mib(value.Done),8:0.0} / {Mib(value.Total):0.0} MiB";
            if (_live)
            {
                Console.Write("\r" + line);
                _barShown = true;
            }
            else if (stepChanged || _sinceLine.ElapsedMilliseconds >= 1000 || value.Done >= value.Total)
            {
                Console.WriteLine(line);
                _sinceLine.Restart();
            }
        }
    }

    public void EndBar()
    {
        if (_barShown) Console.WriteLine();
        _barShown = false;
    }

    private static double Mib(long bytes) => bytes / 1048576.0;

    private static string Bar(long done, long total)
    {
        const int width = 30;
        var filled = total <= 0 ? 0 : (int)Math.Clamp(done * width / total, 0, width);
        return "[" + new string('#', filled) + new string('.', width - filled) + "]";
    }
}
