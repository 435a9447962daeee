using LiveMigration.Cli.Api;

namespace LiveMigration.Cli.Tests;

public sealed class ByteRateTests
{
    [Theory]
    [InlineData("0", 0L)]
    [InlineData("100MiB/s", 100L << 20)]
    [InlineData("100 MiB/s", 100L << 20)]
    [InlineData("512k", 512L << 10)]
    [InlineData("1.5GiB", 3L << 29)]
    [InlineData("10MB/s", 10_000_000L)]
    [InlineData("4096", 4096L)]
    public void Parses_rates_as_operators_write_them(string text, long expected)
    {
        Assert.True(ByteRate.TryParse(text, out var bytes));
        Assert.Equal(expected, bytes);
    }

    [Theory]
    [InlineData("fast")]
    [InlineData("-5M")]
    [InlineData("10 furlongs")]
    [InlineData("")]
    [InlineData("99999999999T")]
    [InlineData("\u0663MiB")]
    [InlineData("\uff11\uff10M")]
    public void Refuses_what_is_not_a_rate(string text) => Assert.False(ByteRate.TryParse(text, out _));
}
